//! The HTML report: one self-contained page with the run's timeline drawn as SVG.
//!
//! Design:
//! - One file, nothing fetched: the CSS is inline, there is no script at all (hover text is
//!   SVG `<title>`, which every browser shows as a tooltip), and a Content-Security-Policy of
//!   `default-src 'none'` makes the browser refuse any fetch a future edit might add. The page
//!   opens from a CI artifact, an e-mail or a laptop without a network.
//! - Everything is drawn from the [`Report`] alone, the same record `report.json` holds, so
//!   the page can never show something the JSON does not say.
//! - The timeline has one row per lane, on one time axis in seconds from `t = 0` (the start
//!   of the timeline) to the end of the timeline or the last thing recorded, whichever is
//!   later:
//!   - faults: a band per fault, from the action that started it to the one that ended it
//!     (a heal, a node-up, a `for:` window's restore), built by walking the journal's
//!     [`Effect`]s in order. A lane's next `start` ends its previous band (a link impaired
//!     twice shows two settings); a band nobody ended runs to the end of the axis. Every WAN
//!     link has a row, impaired or not, so "nothing happened to this link" is visible too;
//!   - workloads: one row per instance, with a marker per event (started, exited, signalled,
//!     restarting, …) and per kill/restart action; events during deployment (`t < 0`) sit
//!     on the axis's left edge and say so in their hover text;
//!   - probes: a strip per probe, one cell per attempt from its start to the next attempt's,
//!     coloured by what became of it ([`Attempt`]: ok, lost, error), with the RTT or the
//!     reason on hover;
//!   - assertions: a row per assertion with its judged window (a metric's instant is a
//!     narrow mark), green when it held and red when not, and the expectation written next
//!     to it.
//! - Below the chart: the header's facts (verdict, seed, target, calibration, …) come first,
//!   then tables of the assertions, the realised schedule, the probes and the workload events.
//! - The page is well-formed XML as well as HTML (void elements closed, every text escaped by
//!   [`esc`]), so tests read it with an XML parser. Every name in it comes from the user's
//!   YAML and goes through [`esc`]; nothing else is trusted either.
//! - Elements carry classes (`band partition`, `cell lost`, `window fail`) and `data-*`
//!   attributes (`data-lane`, `data-from`, `data-to` in seconds) for tests and for anyone
//!   post-processing the page.
//! - The tests read the SVG back with roxmltree (a band per fault, a cell per attempt, a
//!   window per verdict, at the recorded times), and load the page in headless Chromium
//!   (`chromium`; [`crate::testing::headless_chromium`]): no console message at all, and a
//!   screenshot in which the chart adds its colours.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use super::{Change, Effect, JournalEntry, Lane, NodeAspect, Outcome, Report, ReportError};
use super::{WorkloadEvent, WorkloadEventKind, fmt_ms, write_atomic};
use crate::probe::Attempt;

/// Escapes `s` for HTML and XML text and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters are not allowed in XML 1.0 text; names never need them.
            c if c.is_control() && !matches!(c, '\n' | '\t') => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// `s` cut to `n` characters, with an ellipsis when it was longer.
fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut c: String = s.chars().take(n.saturating_sub(1)).collect();
        c.push('…');
        c
    }
}

/// Seconds for people: `0.600s`.
fn secs(t: f64) -> String {
    format!("{t:.3}s")
}

// Layout of the chart, in SVG user units (pixels at 100 %).
pub(crate) const WIDTH: f64 = 1320.0;
/// Left edge of the plot; the labels sit left of it.
pub(crate) const LEFT: f64 = 240.0;
pub(crate) const PLOT_W: f64 = WIDTH - LEFT - 30.0;
const ROW_H: f64 = 18.0;
const ROW_STEP: f64 = 24.0;
const AXIS_H: f64 = 28.0;
const HEADING_H: f64 = 26.0;
/// Characters a row label keeps.
const LABEL_CHARS: usize = 34;
/// Rough width of one character of the 11 px labels, to place text where it fits.
const CHAR_W: f64 = 6.4;

/// Maps timeline offsets (seconds) to x.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scale {
    pub end: f64,
}

impl Scale {
    /// The axis of `report`: from 0 to the end of its timeline or the last thing it recorded.
    pub(crate) fn of(report: &Report) -> Scale {
        let mut end = report.duration.as_secs_f64();
        for j in &report.journal {
            if let Some(a) = j.applied {
                end = end.max(a.as_secs_f64());
            }
        }
        for p in &report.probes {
            if let Some(last) = p.samples.last() {
                end = end.max((last.t + p.every).as_secs_f64());
            }
        }
        for e in &report.workloads {
            end = end.max(e.t);
        }
        for v in &report.assertions {
            if let Some([_, to]) = v.span {
                end = end.max(to);
            }
        }
        Scale {
            end: if end > 0.0 { end } else { 1.0 },
        }
    }

    pub(crate) fn x(&self, t: f64) -> f64 {
        LEFT + t.clamp(0.0, self.end) / self.end * PLOT_W
    }
}

/// A tick step giving at most about 12 ticks over `end` seconds.
fn tick_step(end: f64) -> f64 {
    const STEPS: [f64; 16] = [
        0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    ];
    STEPS
        .into_iter()
        .find(|s| end / s <= 12.0)
        .unwrap_or_else(|| (end / 12.0 / 600.0).ceil() * 600.0)
}

fn tick_label(t: f64, step: f64) -> String {
    if step >= 1.0 {
        format!("{t:.0}s")
    } else if step >= 0.1 {
        format!("{t:.1}s")
    } else {
        format!("{t:.2}s")
    }
}

/// A fault from the action that started it to the one that ended it.
#[derive(Debug)]
pub(crate) struct Band<'a> {
    pub lane: Lane,
    pub from: f64,
    /// `None`: nothing ended it; it runs to the end of the axis.
    pub to: Option<f64>,
    pub start: &'a JournalEntry,
    pub end: Option<&'a JournalEntry>,
}

/// A kill or restart of a workload instance.
#[derive(Debug)]
pub(crate) struct Mark<'a> {
    pub lane: Lane,
    pub t: f64,
    pub entry: &'a JournalEntry,
}

/// Pairs the journal's effects into bands (in order of start) and instant marks.
pub(crate) fn bands(report: &Report) -> (Vec<Band<'_>>, Vec<Mark<'_>>) {
    let mut open: BTreeMap<Lane, usize> = BTreeMap::new();
    let mut bands: Vec<Band<'_>> = Vec::new();
    let mut marks = Vec::new();
    for j in &report.journal {
        // An action that never took effect drew nothing.
        let Some(at) = j.applied else { continue };
        let t = at.as_secs_f64();
        for Effect { lane, change } in &j.effects {
            if *change == Change::Instant {
                marks.push(Mark {
                    lane: lane.clone(),
                    t,
                    entry: j,
                });
                continue;
            }
            if let Some(i) = open.remove(lane) {
                bands[i].to = Some(t);
                bands[i].end = Some(j);
            }
            if *change == Change::Start {
                open.insert(lane.clone(), bands.len());
                bands.push(Band {
                    lane: lane.clone(),
                    from: t,
                    to: None,
                    start: j,
                    end: None,
                });
            }
        }
    }
    (bands, marks)
}

fn lane_label(lane: &Lane) -> String {
    match lane {
        Lane::Partition { partition } => format!("partition {partition}"),
        Lane::Link { link } => format!("link {link}"),
        Lane::Node { node, aspect } => format!(
            "{node} · {}",
            match aspect {
                NodeAspect::Down => "down",
                NodeAspect::Cpu => "cpu",
                NodeAspect::Memory => "memory",
            }
        ),
        Lane::Workload { workload, node } => format!("{workload} @ {node}"),
    }
}

fn lane_class(lane: &Lane) -> &'static str {
    match lane {
        Lane::Partition { .. } => "partition",
        Lane::Link { .. } => "link",
        Lane::Node {
            aspect: NodeAspect::Down,
            ..
        } => "down",
        Lane::Node {
            aspect: NodeAspect::Cpu,
            ..
        } => "cpu",
        Lane::Node {
            aspect: NodeAspect::Memory,
            ..
        } => "memory",
        Lane::Workload { .. } => "workload",
    }
}

fn event_word(k: WorkloadEventKind) -> &'static str {
    match k {
        WorkloadEventKind::Started => "started",
        WorkloadEventKind::Exited => "exited",
        WorkloadEventKind::SpawnFailed => "spawn-failed",
        WorkloadEventKind::Signalled => "signalled",
        WorkloadEventKind::Restarting => "restarting",
        WorkloadEventKind::Suspended => "suspended",
        WorkloadEventKind::Resumed => "resumed",
        WorkloadEventKind::Stopped => "stopped",
    }
}

/// The class of an event's marker: how bad it looks.
fn event_class(e: &WorkloadEvent) -> &'static str {
    match e.kind {
        WorkloadEventKind::Started | WorkloadEventKind::Resumed => "ev-up",
        WorkloadEventKind::Exited if e.code == Some(0) => "ev-neutral",
        WorkloadEventKind::Stopped => "ev-neutral",
        WorkloadEventKind::Restarting | WorkloadEventKind::Suspended => "ev-warn",
        WorkloadEventKind::Exited
        | WorkloadEventKind::SpawnFailed
        | WorkloadEventKind::Signalled => "ev-down",
    }
}

fn event_text(e: &WorkloadEvent) -> String {
    let mut s = format!(
        "{} @ {}: {} at {}",
        e.workload,
        e.node,
        event_word(e.kind),
        secs(e.t)
    );
    if e.t < 0.0 {
        s.push_str(" (during deployment, before the timeline)");
    }
    if let Some(p) = e.pid {
        let _ = write!(s, ", pid {p}");
    }
    if let Some(c) = e.code {
        let _ = write!(s, ", exit code {c}");
    }
    if let Some(sig) = e.signal {
        let _ = write!(s, ", signal {sig}");
    }
    if let Some(d) = &e.detail {
        let _ = write!(s, ": {d}");
    }
    s
}

fn outcome_class(o: Outcome) -> &'static str {
    match o {
        Outcome::Passed => "passed",
        Outcome::Failed => "failed",
        Outcome::Error => "error",
    }
}

/// Starts a row at `*y`: its background and label. Returns its top and moves `y` past it.
fn row(body: &mut String, y: &mut f64, text: &str, class: &str) -> f64 {
    let top = *y;
    let _ = write!(
        body,
        r#"<rect class="lane" x="{LEFT:.2}" y="{top:.2}" width="{PLOT_W:.2}" height="{ROW_H:.2}"/>"#
    );
    label(body, top, text, class);
    *y += ROW_STEP;
    top
}

/// Writes a row label (clipped, the full text on hover) centred on `y`.
fn label(svg: &mut String, y: f64, text: &str, class: &str) {
    let _ = write!(
        svg,
        r#"<text class="label {class}" x="{:.2}" y="{:.2}"><title>{}</title>{}</text>"#,
        LEFT - 8.0,
        y + ROW_H / 2.0 + 4.0,
        esc(text),
        esc(&clip(text, LABEL_CHARS))
    );
}

fn heading(svg: &mut String, y: f64, text: &str) {
    let _ = write!(
        svg,
        r#"<text class="heading" x="8" y="{:.2}">{}</text><line class="rule" x1="8" x2="{:.2}" y1="{:.2}" y2="{:.2}"/>"#,
        y + 16.0,
        esc(text),
        WIDTH - 8.0,
        y + 21.0,
        y + 21.0
    );
}

fn axis(svg: &mut String, sc: Scale, y: f64, top: bool) {
    let step = tick_step(sc.end);
    let _ = write!(
        svg,
        r#"<g class="axis"><line x1="{:.2}" x2="{:.2}" y1="{y:.2}" y2="{y:.2}"/>"#,
        LEFT,
        LEFT + PLOT_W
    );
    let n = (sc.end / step + 1e-9).floor() as usize;
    for i in 0..=n {
        let t = i as f64 * step;
        let x = sc.x(t);
        let (y1, ty) = if top {
            (y - 5.0, y - 8.0)
        } else {
            (y + 5.0, y + 17.0)
        };
        let _ = write!(
            svg,
            r#"<line x1="{x:.2}" x2="{x:.2}" y1="{y1:.2}" y2="{y:.2}"/><text x="{x:.2}" y="{ty:.2}">{}</text>"#,
            tick_label(t, step)
        );
    }
    svg.push_str("</g>");
}

/// The timeline as one `<svg>` element.
pub fn timeline_svg(report: &Report) -> String {
    let sc = Scale::of(report);
    let (bands, marks) = bands(report);

    // Fault lanes: every link, then whatever the journal touched, in lane order.
    let mut fault_lanes: BTreeMap<Lane, ()> = report
        .links
        .iter()
        .map(|l| {
            (
                Lane::Link {
                    link: l.name.clone(),
                },
                (),
            )
        })
        .collect();
    for b in &bands {
        fault_lanes.insert(b.lane.clone(), ());
    }
    // Workload lanes: instances with events or kill/restart actions.
    let mut work_lanes: BTreeMap<Lane, ()> = BTreeMap::new();
    for e in &report.workloads {
        work_lanes.insert(
            Lane::Workload {
                workload: e.workload.clone(),
                node: e.node.clone(),
            },
            (),
        );
    }
    for m in &marks {
        work_lanes.insert(m.lane.clone(), ());
    }

    let mut body = String::new();
    let mut y = AXIS_H;

    if !fault_lanes.is_empty() {
        heading(&mut body, y, "faults");
        y += HEADING_H;
        for lane in fault_lanes.keys() {
            let top = row(&mut body, &mut y, &lane_label(lane), "fault");
            let _ = write!(
                body,
                r#"<g class="fault-lane" data-lane="{}">"#,
                esc(&lane_label(lane))
            );
            for b in bands.iter().filter(|b| &b.lane == lane) {
                let to = b.to.unwrap_or(sc.end);
                let (x0, x1) = (sc.x(b.from), sc.x(to));
                let w = (x1 - x0).max(1.0);
                let until = match (b.to, b.end) {
                    (Some(t), Some(e)) => format!("until {} ({})", secs(t), e.summary),
                    _ => "still in effect at the end".to_string(),
                };
                let mut title = format!("{}: from {} {until}", b.start.summary, secs(b.from));
                if let Some(e) = &b.start.error {
                    let _ = write!(title, "; applying it FAILED: {e}");
                }
                let failed = if b.start.ok { "" } else { " failed" };
                let _ = write!(
                    body,
                    r#"<rect class="band {}{failed}" data-lane="{}" data-from="{:.6}" data-to="{:.6}" x="{x0:.2}" y="{:.2}" width="{w:.2}" height="{:.2}" rx="3"><title>{}</title></rect>"#,
                    lane_class(lane),
                    esc(&lane_label(lane)),
                    b.from,
                    to,
                    top + 1.0,
                    ROW_H - 2.0,
                    esc(&title)
                );
                let text = clip(&b.start.summary, 80);
                if (text.chars().count() as f64) * CHAR_W + 8.0 < w {
                    let _ = write!(
                        body,
                        r#"<text class="band-text" x="{:.2}" y="{:.2}">{}</text>"#,
                        x0 + 4.0,
                        top + ROW_H / 2.0 + 4.0,
                        esc(&text)
                    );
                }
            }
            body.push_str("</g>");
        }
    }

    if !work_lanes.is_empty() {
        heading(&mut body, y, "workloads");
        y += HEADING_H;
        for lane in work_lanes.keys() {
            let Lane::Workload { workload, node } = lane else {
                continue;
            };
            let top = row(&mut body, &mut y, &lane_label(lane), "workload");
            let cy = top + ROW_H / 2.0;
            let _ = write!(
                body,
                r#"<g class="workload-lane" data-lane="{}">"#,
                esc(&lane_label(lane))
            );
            for e in report
                .workloads
                .iter()
                .filter(|e| &e.workload == workload && &e.node == node)
            {
                let _ = write!(
                    body,
                    r#"<circle class="event {} {}" data-t="{:.6}" cx="{:.2}" cy="{cy:.2}" r="4.5"><title>{}</title></circle>"#,
                    event_class(e),
                    event_word(e.kind),
                    e.t,
                    sc.x(e.t),
                    esc(&event_text(e))
                );
            }
            for m in marks.iter().filter(|m| &m.lane == lane) {
                let x = sc.x(m.t);
                // A downward triangle for a kill, upward for a restart.
                let (class, pts) = if m.entry.verb == "kill" {
                    (
                        "kill",
                        format!(
                            "{:.2},{:.2} {:.2},{:.2} {x:.2},{:.2}",
                            x - 6.0,
                            top + 1.0,
                            x + 6.0,
                            top + 1.0,
                            top + ROW_H - 1.0
                        ),
                    )
                } else {
                    (
                        "restart",
                        format!(
                            "{:.2},{:.2} {:.2},{:.2} {x:.2},{:.2}",
                            x - 6.0,
                            top + ROW_H - 1.0,
                            x + 6.0,
                            top + ROW_H - 1.0,
                            top + 1.0
                        ),
                    )
                };
                let _ = write!(
                    body,
                    r#"<polygon class="action {class}" data-t="{:.6}" points="{pts}"><title>{} at {}</title></polygon>"#,
                    m.t,
                    esc(&m.entry.summary),
                    secs(m.t)
                );
            }
            body.push_str("</g>");
        }
    }

    if !report.probes.is_empty() {
        heading(&mut body, y, "probes");
        y += HEADING_H;
        for p in &report.probes {
            let text = format!("{} ({} {} → {})", p.name, p.kind, p.from, p.target);
            let top = row(&mut body, &mut y, &text, "probe");
            let _ = write!(body, r#"<g class="probe" data-probe="{}">"#, esc(&p.name));
            for (i, s) in p.samples.iter().enumerate() {
                let t = s.t.as_secs_f64();
                let next = p
                    .samples
                    .get(i + 1)
                    .map_or(f64::INFINITY, |n| n.t.as_secs_f64());
                let end = (t + p.every.as_secs_f64()).min(next);
                let (x0, x1) = (sc.x(t), sc.x(end));
                let (class, what) = match s.attempt() {
                    Attempt::Ok => (
                        "ok",
                        match s.rtt {
                            Some(r) => format!("ok, RTT {}", fmt_ms(r.as_secs_f64() * 1e3)),
                            None => "ok".to_string(),
                        },
                    ),
                    Attempt::Lost => (
                        "lost",
                        format!("lost: {}", s.error.as_deref().unwrap_or("no answer")),
                    ),
                    Attempt::Error => (
                        "error",
                        format!("error: {}", s.error.as_deref().unwrap_or("failed")),
                    ),
                };
                let _ = write!(
                    body,
                    r#"<rect class="cell {class}" data-t="{t:.6}" x="{x0:.2}" y="{:.2}" width="{:.2}" height="{:.2}"><title>{} #{} at {}: {}</title></rect>"#,
                    top + 2.0,
                    (x1 - x0).max(0.5),
                    ROW_H - 4.0,
                    esc(&p.name),
                    i + 1,
                    secs(t),
                    esc(&what)
                );
            }
            body.push_str("</g>");
        }
    }

    if !report.assertions.is_empty() {
        heading(&mut body, y, "assertions");
        y += HEADING_H;
        for v in &report.assertions {
            let top = row(&mut body, &mut y, &v.name, "assertion");
            let verdict = if v.passed { "pass" } else { "fail" };
            let _ = write!(
                body,
                r#"<g class="assertion {verdict}" data-assertion="{}">"#,
                esc(&v.name)
            );
            let mark = if v.passed { "✓" } else { "✗" };
            let text = format!(
                "{mark} {}: observed {}",
                clip(&v.expected, 60),
                v.observed_text
            );
            let title = format!(
                "{} {}: observed {}, expected {}{}; {}",
                if v.passed { "PASSED" } else { "FAILED" },
                v.name,
                v.observed_text,
                v.expected,
                v.window
                    .as_ref()
                    .map(|w| format!(" ({w})"))
                    .unwrap_or_default(),
                v.detail
            );
            match v.span {
                Some([from, to]) => {
                    let (mut x0, mut x1) = (sc.x(from), sc.x(to));
                    if x1 - x0 < 4.0 {
                        // An instant (a metric read at a time): a narrow mark centred on it.
                        let c = (x0 + x1) / 2.0;
                        (x0, x1) = (c - 2.0, c + 2.0);
                    }
                    let _ = write!(
                        body,
                        r#"<rect class="window {verdict}" data-from="{from:.6}" data-to="{to:.6}" x="{x0:.2}" y="{:.2}" width="{:.2}" height="{:.2}" rx="3"><title>{}</title></rect>"#,
                        top + 1.0,
                        x1 - x0,
                        ROW_H - 2.0,
                        esc(&title)
                    );
                    // After the window if it fits, else before it, else inside it.
                    let w = text.chars().count() as f64 * CHAR_W;
                    let (tx, anchor, inside) = if x1 + 6.0 + w <= WIDTH - 4.0 {
                        (x1 + 6.0, "start", "")
                    } else if x0 - 6.0 - w >= LEFT {
                        (x0 - 6.0, "end", "")
                    } else {
                        (x0 + 6.0, "start", " inside")
                    };
                    let _ = write!(
                        body,
                        r#"<text class="verdict-text {verdict}{inside}" text-anchor="{anchor}" x="{tx:.2}" y="{:.2}"><title>{}</title>{}</text>"#,
                        top + ROW_H / 2.0 + 4.0,
                        esc(&title),
                        esc(&text)
                    );
                }
                None => {
                    let _ = write!(
                        body,
                        r#"<text class="verdict-text {verdict}" x="{:.2}" y="{:.2}"><title>{}</title>{} (no window)</text>"#,
                        LEFT + 4.0,
                        top + ROW_H / 2.0 + 4.0,
                        esc(&title),
                        esc(&text)
                    );
                }
            }
            body.push_str("</g>");
        }
    }

    let bottom = y + 4.0;
    let height = bottom + AXIS_H;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="timeline" width="{WIDTH:.0}" height="{height:.0}" viewBox="0 0 {WIDTH:.0} {height:.0}" role="img" aria-label="timeline of the run">"#
    );
    // Grid lines behind everything, at the ticks.
    let step = tick_step(sc.end);
    svg.push_str(r#"<g class="grid">"#);
    let n = (sc.end / step + 1e-9).floor() as usize;
    for i in 0..=n {
        let x = sc.x(i as f64 * step);
        let _ = write!(
            svg,
            r#"<line x1="{x:.2}" x2="{x:.2}" y1="{AXIS_H:.2}" y2="{bottom:.2}"/>"#
        );
    }
    svg.push_str("</g>");
    axis(&mut svg, sc, AXIS_H - 2.0, true);
    svg.push_str(&body);
    axis(&mut svg, sc, bottom, false);
    svg.push_str("</svg>");
    svg
}

const STYLE: &str = r#"
:root { color-scheme: light; --ok: #2e9d4f; --lost: #e3a008; --err: #d03b3b;
  --pass: #2e9d4f; --fail: #d03b3b; --ink: #1f2328; --dim: #656d76; --line: #d0d7de; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
  color: var(--ink); margin: 0; padding: 20px 28px 40px; background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; display: flex; align-items: center; gap: 12px; }
h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
.badge { font-size: 14px; padding: 3px 10px; border-radius: 4px; color: #fff; letter-spacing: .04em; }
.passed .badge { background: var(--pass); } .failed .badge, .error .badge { background: var(--fail); }
.desc { color: var(--dim); margin: 0 0 10px; }
dl.facts { display: grid; grid-template-columns: max-content 1fr max-content 1fr; gap: 2px 14px; margin: 8px 0; }
dl.facts dt { color: var(--dim); } dl.facts dd { margin: 0; font-variant-numeric: tabular-nums; }
.errorbox { background: #fff1f0; border: 1px solid var(--fail); border-radius: 4px; padding: 8px 12px; margin: 10px 0; }
.chart { overflow-x: auto; border: 1px solid var(--line); border-radius: 6px; padding: 6px 0; }
.legend { display: flex; flex-wrap: wrap; gap: 6px 16px; color: var(--dim); font-size: 12px; margin: 4px 0 8px; }
.sw { display: inline-block; width: 14px; height: 10px; border-radius: 2px; margin-right: 4px; vertical-align: -1px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 3px 8px; border-bottom: 1px solid #eaeef2; vertical-align: top; }
th { color: var(--dim); font-weight: 600; background: #f6f8fa; }
td.num, th.num { text-align: right; }
tr.fail td { background: #fff5f5; } td.v-pass { color: var(--pass); font-weight: 600; }
td.v-fail { color: var(--fail); font-weight: 600; }
code { font: 12px ui-monospace, "DejaVu Sans Mono", monospace; }
footer { margin-top: 30px; color: var(--dim); font-size: 12px; }
svg.timeline { display: block; font: 11px system-ui, "DejaVu Sans", sans-serif; }
svg .label { text-anchor: end; fill: var(--ink); }
svg .heading { font-weight: 700; font-size: 12px; fill: var(--dim); text-transform: uppercase; letter-spacing: .06em; }
svg .rule { stroke: var(--line); }
svg .lane { fill: #f6f8fa; }
svg .grid line { stroke: #eaeef2; }
svg .axis line { stroke: #8c959f; } svg .axis text { text-anchor: middle; fill: var(--dim); }
svg .band { fill-opacity: .85; } svg .band.failed { fill-opacity: .35; stroke: var(--fail); stroke-dasharray: 3 2; }
svg .band.partition { fill: #8250df; } svg .band.link { fill: #e16f24; } svg .band.down { fill: #57606a; }
svg .band.cpu { fill: #2f81f7; } svg .band.memory { fill: #1b9aaa; }
svg .band-text { fill: #fff; pointer-events: none; }
svg .cell.ok { fill: var(--ok); } svg .cell.lost { fill: var(--lost); } svg .cell.error { fill: var(--err); }
svg .window.pass { fill: var(--pass); fill-opacity: .75; } svg .window.fail { fill: var(--fail); fill-opacity: .8; }
svg .verdict-text.pass { fill: #1a7f37; } svg .verdict-text.fail { fill: #b42318; font-weight: 600; }
svg .verdict-text.inside { fill: #fff; }
svg .event { stroke: #fff; stroke-width: 1; } svg .ev-up { fill: var(--ok); } svg .ev-down { fill: var(--err); }
svg .ev-warn { fill: var(--lost); } svg .ev-neutral { fill: #8c959f; }
svg .action.kill { fill: #24292f; } svg .action.restart { fill: #2f81f7; }
"#;

fn legend(s: &mut String) {
    s.push_str(r#"<div class="legend">"#);
    for (color, what) in [
        ("#8250df", "partition"),
        ("#e16f24", "link impairment"),
        ("#57606a", "node down"),
        ("#2f81f7", "CPU limit"),
        ("#1b9aaa", "memory limit"),
        ("var(--ok)", "probe ok / workload up"),
        ("var(--lost)", "probe lost (no answer) / restarting"),
        ("var(--err)", "probe error / workload down"),
        ("var(--pass)", "assertion held"),
        ("var(--fail)", "assertion failed"),
    ] {
        let _ = write!(
            s,
            r#"<span><span class="sw" style="background:{color}"></span>{what}</span>"#
        );
    }
    s.push_str("<span>▼ kill ▲ restart (actions); hover anything for details</span></div>");
}

fn fact(s: &mut String, k: &str, v: &str) {
    let _ = write!(s, "<dt>{}</dt><dd>{}</dd>", esc(k), esc(v));
}

fn header(s: &mut String, r: &Report) {
    let _ = write!(
        s,
        r#"<header class="{}"><h1><span class="badge">{}</span> {}</h1>"#,
        outcome_class(r.outcome),
        r.outcome.word(),
        esc(&r.scenario)
    );
    if let Some(d) = &r.description {
        let _ = write!(s, r#"<p class="desc">{}</p>"#, esc(d));
    }
    let passed = r.assertions.iter().filter(|v| v.passed).count();
    s.push_str(r#"<dl class="facts">"#);
    fact(
        s,
        "assertions",
        &format!("{passed} of {} held", r.assertions.len()),
    );
    fact(
        s,
        "seed",
        &format!(
            "{} ({})",
            r.seed,
            serde_json::to_value(r.seed_source)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        ),
    );
    fact(s, "target", &r.target);
    fact(s, "run", &r.run_id);
    fact(
        s,
        "started",
        &r.started_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    );
    fact(
        s,
        "timeline",
        &format!(
            "{} planned, {:.1}s wall clock in all",
            secs(r.duration.as_secs_f64()),
            r.elapsed()
        ),
    );
    if !r.mechanism.is_empty() {
        fact(s, "impairments by", &r.mechanism);
    }
    let calibration = match &r.host_cpu {
        Some(h) => format!(
            "{:.2} × a Raspberry Pi 5 core, {} CPUs, cpuScale {}; {}",
            h.speed_per_core, h.online_cpus, h.cpu_scale, h.source
        ),
        None => "not recorded".to_string(),
    };
    fact(s, "calibration", &calibration);
    if r.lag.count > 0 {
        let f = |v: Option<f64>| v.map(fmt_ms).unwrap_or_else(|| "-".into());
        fact(
            s,
            "action lag",
            &format!(
                "p50 {} p99 {} max {} over {} actions",
                f(r.lag.p50_ms),
                f(r.lag.p99_ms),
                f(r.lag.max_ms),
                r.lag.count
            ),
        );
    }
    fact(s, "scenario file", &r.file.display().to_string());
    s.push_str("</dl>");
    if let Some(e) = &r.error {
        let _ = write!(
            s,
            r#"<div class="errorbox"><strong>Error:</strong> {}</div>"#,
            esc(e)
        );
    }
    s.push_str("</header>");
}

fn assertions_table(s: &mut String, r: &Report) {
    if r.assertions.is_empty() {
        return;
    }
    s.push_str(
        r#"<h2>Assertions</h2><table class="assertions"><thead><tr><th>verdict</th><th>name</th><th>expected</th><th>observed</th><th>window</th><th class="num">samples</th><th>detail</th></tr></thead><tbody>"#,
    );
    for v in &r.assertions {
        let (row, cell, word) = if v.passed {
            ("pass", "v-pass", "✓ held")
        } else {
            ("fail", "v-fail", "✗ failed")
        };
        let _ = write!(
            s,
            r#"<tr class="{row}"><td class="{cell}">{word}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td class="num">{}</td><td>{}</td></tr>"#,
            esc(&v.name),
            esc(&v.expected),
            esc(&v.observed_text),
            esc(v.window.as_deref().unwrap_or("-")),
            v.samples,
            esc(&v.detail)
        );
    }
    s.push_str("</tbody></table>");
}

fn schedule_table(s: &mut String, r: &Report) {
    s.push_str("<h2>Realised schedule</h2>");
    if r.journal.is_empty() {
        s.push_str("<p>No action was applied.</p>");
        return;
    }
    s.push_str(
        r#"<table class="schedule"><thead><tr><th class="num">#</th><th class="num">scheduled</th><th class="num">applied</th><th class="num">lag</th><th class="num">took</th><th>action</th><th>by</th><th>result</th></tr></thead><tbody>"#,
    );
    for j in &r.journal {
        let f = |v: Option<f64>| v.map(fmt_ms).unwrap_or_else(|| "-".into());
        let result = match &j.error {
            Some(e) => format!("failed: {e}"),
            None if j.ok => "ok".to_string(),
            None => "failed".to_string(),
        };
        let _ = write!(
            s,
            r#"<tr class="{}"><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td>{}{}</td><td>{}</td><td>{}</td></tr>"#,
            if j.ok { "ok" } else { "fail" },
            j.seq,
            secs(j.scheduled.as_secs_f64()),
            j.applied
                .map(|a| secs(a.as_secs_f64()))
                .unwrap_or_else(|| "never".into()),
            f(j.lag_ms),
            f(j.apply_ms),
            esc(&j.summary),
            if j.revert { " <em>(revert)</em>" } else { "" },
            esc(j.mechanism.as_deref().unwrap_or("-")),
            esc(&result)
        );
    }
    s.push_str("</tbody></table>");
}

fn probes_table(s: &mut String, r: &Report) {
    if r.probes.is_empty() {
        return;
    }
    s.push_str(
        r#"<h2>Probes</h2><table class="probes"><thead><tr><th>probe</th><th>from</th><th>target</th><th>kind</th><th class="num">every</th><th class="num">ok / attempts</th><th class="num">lost</th><th class="num">errors</th><th class="num">RTT p50</th><th class="num">RTT p99</th></tr></thead><tbody>"#,
    );
    for p in &r.probes {
        let lost = p
            .samples
            .iter()
            .filter(|x| x.attempt() == Attempt::Lost)
            .count();
        let errors = p
            .samples
            .iter()
            .filter(|x| x.attempt() == Attempt::Error)
            .count();
        let f = |v: Option<f64>| v.map(fmt_ms).unwrap_or_else(|| "-".into());
        let _ = write!(
            s,
            r#"<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class="num">{}</td><td class="num">{} / {}</td><td class="num">{lost}</td><td class="num">{errors}</td><td class="num">{}</td><td class="num">{}</td></tr>"#,
            esc(&p.name),
            esc(&p.from),
            esc(&p.target),
            esc(&p.kind),
            secs(p.every.as_secs_f64()),
            p.successes,
            p.attempts,
            f(p.rtt_p50_ms),
            f(p.rtt_p99_ms)
        );
    }
    s.push_str("</tbody></table>");
}

fn workloads_table(s: &mut String, r: &Report) {
    if r.workloads.is_empty() {
        return;
    }
    s.push_str(
        r#"<h2>Workload events</h2><table class="workloads"><thead><tr><th class="num">t</th><th>workload</th><th>node</th><th>event</th><th>detail</th></tr></thead><tbody>"#,
    );
    for e in &r.workloads {
        let mut detail = Vec::new();
        if let Some(p) = e.pid {
            detail.push(format!("pid {p}"));
        }
        if let Some(c) = e.code {
            detail.push(format!("exit code {c}"));
        }
        if let Some(sig) = e.signal {
            detail.push(format!("signal {sig}"));
        }
        if let Some(d) = &e.detail {
            detail.push(d.clone());
        }
        let _ = write!(
            s,
            r#"<tr><td class="num">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            secs(e.t),
            esc(&e.workload),
            esc(&e.node),
            event_word(e.kind),
            esc(&detail.join(", "))
        );
    }
    s.push_str("</tbody></table>");
}

fn run_table(s: &mut String, r: &Report) {
    s.push_str("<h2>Run</h2>");
    if !r.phases.is_empty() {
        s.push_str(
            r#"<table class="phases"><thead><tr><th>phase</th><th class="num">seconds</th><th>result</th></tr></thead><tbody>"#,
        );
        for p in &r.phases {
            let _ = write!(
                s,
                r#"<tr><td>{}</td><td class="num">{:.3}</td><td>{}</td></tr>"#,
                esc(&p.name),
                p.seconds,
                if p.ok { "ok" } else { "failed" }
            );
        }
        s.push_str("</tbody></table>");
    }
    let lists: [(&str, &Vec<String>); 2] = [
        ("Teardown problems", &r.teardown.errors),
        ("Notes", &r.notes),
    ];
    for (title, items) in lists {
        if items.is_empty() {
            continue;
        }
        let _ = write!(s, "<h3>{title}</h3><ul>");
        for i in items {
            let _ = write!(s, "<li>{}</li>", esc(i));
        }
        s.push_str("</ul>");
    }
    if !r.artifacts.is_empty() {
        s.push_str("<h3>Files</h3><ul>");
        for a in &r.artifacts {
            let _ = write!(
                s,
                "<li>{}: <code>{}</code></li>",
                esc(&a.kind),
                esc(&a.path.display().to_string())
            );
        }
        s.push_str("</ul>");
    }
}

/// Renders the whole page.
pub fn html(report: &Report) -> String {
    let mut s = String::with_capacity(64 * 1024);
    let _ = write!(
        s,
        r#"<!DOCTYPE html>
<html xmlns="http://www.w3.org/1999/xhtml" lang="en"><head><meta charset="utf-8"/>
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'"/>
<meta name="viewport" content="width=device-width, initial-scale=1"/>
<title>{} {} — edgesim</title><style>{STYLE}</style></head><body>
"#,
        report.outcome.word(),
        esc(&report.scenario)
    );
    header(&mut s, report);
    s.push_str("<h2>Timeline</h2>");
    legend(&mut s);
    s.push_str(r#"<div class="chart">"#);
    s.push_str(&timeline_svg(report));
    s.push_str("</div>");
    assertions_table(&mut s, report);
    schedule_table(&mut s, report);
    probes_table(&mut s, report);
    workloads_table(&mut s, report);
    run_table(&mut s, report);
    let _ = write!(
        s,
        "<footer>edgesim {} · times are seconds from the start of the timeline</footer>\n</body></html>\n",
        env!("CARGO_PKG_VERSION")
    );
    s
}

/// Writes the HTML report.
pub fn write_html(report: &Report, path: &Path) -> Result<(), ReportError> {
    write_atomic(path, html(report).as_bytes())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::probe::Sample;
    use crate::report::tests::sample_report;
    use crate::report::{LinkReport, ProbeSummary};
    use crate::scenario::plan::{Probe, ProbeKind};

    fn entry(
        seq: usize,
        at_ms: u64,
        verb: &str,
        summary: &str,
        effects: Vec<Effect>,
    ) -> JournalEntry {
        JournalEntry {
            seq,
            scheduled: Duration::from_millis(at_ms),
            applied: Some(Duration::from_millis(at_ms)),
            lag_ms: Some(0.0),
            apply_ms: Some(1.0),
            verb: verb.into(),
            summary: summary.into(),
            revert: false,
            mechanism: None,
            ok: true,
            error: None,
            effects,
        }
    }

    fn on(lane: Lane, change: Change) -> Vec<Effect> {
        vec![Effect { lane, change }]
    }

    fn wan() -> Lane {
        Lane::Link { link: "wan".into() }
    }

    fn gw_down() -> Lane {
        Lane::Node {
            node: "gw-1".into(),
            aspect: NodeAspect::Down,
        }
    }

    /// The shared sample report (partition `p1` 0.6004 s..0.8012 s, probe `uplink` with 10
    /// attempts, `cut` passed over 0.6..0.8 s, `back` failed over 0..2 s), plus: two links,
    /// `wan` impaired 1.0..1.5 s, `gw-1` down from 1.2 s to the end, a kill at 0.4 s, workload
    /// events, a metric verdict at 1.5 s, and a probe named `<a&b>` with ok, lost and error
    /// attempts.
    fn fixture() -> Report {
        let mut r = sample_report();
        let link = |name: &str| LinkReport {
            name: name.into(),
            a: "factory".into(),
            b: "cloud".into(),
            mechanisms: vec!["netem".into()],
            up: Default::default(),
            down: Default::default(),
        };
        r.links = vec![link("wan"), link("backup")];
        let sink = Lane::Workload {
            workload: "sink".into(),
            node: "sink".into(),
        };
        let mut more = vec![
            entry(
                2,
                400,
                "kill",
                "kill `sink` on sink",
                on(sink, Change::Instant),
            ),
            entry(
                3,
                1000,
                "impair",
                "impair `wan` delay 80ms",
                on(wan(), Change::Start),
            ),
            entry(
                4,
                1200,
                "node-down",
                "node-down (poweroff) gw-1",
                on(gw_down(), Change::Start),
            ),
            entry(
                5,
                1500,
                "impair",
                "restore `wan` (end of `for`)",
                on(wan(), Change::End),
            ),
        ];
        more[3].revert = true;
        r.journal.extend(more);
        r.journal.sort_by_key(|j| j.applied);
        r.workloads.extend([
            WorkloadEvent {
                t: 0.4,
                workload: "sink".into(),
                node: "sink".into(),
                kind: WorkloadEventKind::Signalled,
                pid: Some(4242),
                code: None,
                signal: Some(9),
                detail: None,
            },
            WorkloadEvent {
                t: 0.5,
                workload: "sink".into(),
                node: "sink".into(),
                kind: WorkloadEventKind::Restarting,
                pid: None,
                code: None,
                signal: None,
                detail: Some("restart policy always".into()),
            },
        ]);
        let mut metric = r.assertions[0].clone();
        metric.name = "backlog".into();
        metric.window = Some("at 1.5s".into());
        metric.span = Some([1.5, 1.5]);
        r.assertions.push(metric);
        let ms = Duration::from_millis;
        let sample = |t: u64, ok: bool, error: Option<&str>| Sample {
            t: ms(t),
            ok,
            rtt: ok.then(|| ms(12)),
            error: error.map(str::to_string),
            seq: None,
        };
        let odd = Probe {
            name: "<a&b>".into(),
            from: 0,
            kind: ProbeKind::Tcp {
                target: "sink:80".into(),
                addr: "10.0.0.2:80".parse().unwrap(),
            },
            every: ms(500),
            timeout: ms(400),
        };
        let samples = vec![
            sample(0, true, None),
            sample(500, false, Some("no connection within 400ms")),
            sample(
                1000,
                false,
                Some("connecting: Connection refused (os error 111)"),
            ),
            sample(1500, true, None),
        ];
        r.probes.push(ProbeSummary::new(&odd, "gw-1", samples));
        r.finish();
        r
    }

    /// The whole page as XML (its `<!DOCTYPE html>` is a DTD to roxmltree).
    fn page_doc(page: &str) -> roxmltree::Document<'_> {
        let opt = roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        };
        roxmltree::Document::parse_with_options(page, opt).unwrap()
    }

    fn num(n: roxmltree::Node<'_, '_>, attr: &str) -> f64 {
        n.attribute(attr)
            .unwrap_or_else(|| panic!("no {attr} on {n:?}"))
            .parse()
            .unwrap()
    }

    fn classes<'a>(n: roxmltree::Node<'a, '_>) -> Vec<&'a str> {
        n.attribute("class").unwrap_or("").split(' ').collect()
    }

    fn has_class(n: roxmltree::Node<'_, '_>, c: &str) -> bool {
        classes(n).contains(&c)
    }

    fn title(n: roxmltree::Node<'_, '_>) -> String {
        n.children()
            .find(|c| c.has_tag_name("title"))
            .and_then(|t| t.text())
            .unwrap_or("")
            .to_string()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 0.011
    }

    #[test]
    fn the_axis_spans_the_timeline() {
        let r = fixture();
        let sc = Scale::of(&r);
        assert_eq!(
            sc.end, 2.0,
            "duration 2s; the last attempt (1.8s + 200ms) ends there too"
        );
        assert!(close(sc.x(0.0), LEFT) && close(sc.x(2.0), LEFT + PLOT_W));
        assert_eq!(tick_step(2.0), 0.2);
        assert_eq!(tick_step(40.0), 5.0);
        assert_eq!(tick_step(600.0), 60.0);
    }

    #[test]
    fn one_band_per_fault_from_its_start_to_its_end() {
        let r = fixture();
        let svg = timeline_svg(&r);
        let doc = roxmltree::Document::parse(&svg).unwrap();
        let bands: Vec<_> = doc
            .descendants()
            .filter(|n| n.has_tag_name("rect") && has_class(*n, "band"))
            .collect();
        let sc = Scale::of(&r);
        let x = |t: f64| LEFT + t / 2.0 * PLOT_W;
        // (lane, class, from, to): the partition, the link's impairment, the node that never
        // came back (its band runs to the end of the axis).
        let want = [
            ("partition p1", "partition", 0.6004, 0.8012),
            ("link wan", "link", 1.0, 1.5),
            ("gw-1 · down", "down", 1.2, 2.0),
        ];
        assert_eq!(bands.len(), want.len(), "{svg}");
        for (lane, class, from, to) in want {
            let b = bands
                .iter()
                .find(|b| b.attribute("data-lane") == Some(lane))
                .unwrap_or_else(|| panic!("no band on {lane}"));
            assert!(has_class(*b, class), "{lane}: {:?}", classes(*b));
            assert!(
                close(num(*b, "x"), x(from)),
                "{lane} starts at {}",
                num(*b, "x")
            );
            assert!(
                close(num(*b, "x") + num(*b, "width"), x(to)),
                "{lane} ends at {}",
                num(*b, "x") + num(*b, "width")
            );
            assert!(close(sc.x(from), x(from)));
        }
        let p1 = title(*bands.iter().find(|b| has_class(**b, "partition")).unwrap());
        assert_eq!(
            p1,
            "partition factory|cloud (p1): from 0.600s until 0.801s (heal p1)"
        );
        let down = title(*bands.iter().find(|b| has_class(**b, "down")).unwrap());
        assert!(down.ends_with("still in effect at the end"), "{down}");
        // Every link has a row, the untouched `backup` too, with no band on it.
        let lanes: Vec<&str> = doc
            .descendants()
            .filter(|n| n.has_tag_name("g") && has_class(*n, "fault-lane"))
            .filter_map(|n| n.attribute("data-lane"))
            .collect();
        assert_eq!(
            lanes,
            ["partition p1", "link backup", "link wan", "gw-1 · down"]
        );
    }

    #[test]
    fn one_strip_per_probe_with_a_cell_per_attempt_coloured_by_result() {
        let r = fixture();
        let svg = timeline_svg(&r);
        let doc = roxmltree::Document::parse(&svg).unwrap();
        let strips: Vec<_> = doc
            .descendants()
            .filter(|n| n.has_tag_name("g") && has_class(*n, "probe"))
            .collect();
        let names: Vec<&str> = strips
            .iter()
            .filter_map(|s| s.attribute("data-probe"))
            .collect();
        assert_eq!(names, ["uplink", "<a&b>"]);
        let cells = |i: usize| -> Vec<roxmltree::Node<'_, '_>> {
            strips[i]
                .children()
                .filter(|c| c.has_tag_name("rect"))
                .collect()
        };
        let result = |c: &roxmltree::Node<'_, '_>| classes(*c)[1].to_string();
        let uplink = cells(0);
        assert_eq!(uplink.len(), 10);
        let want: Vec<&str> = (0..10)
            .map(|i| if i == 3 { "lost" } else { "ok" })
            .collect();
        assert_eq!(uplink.iter().map(result).collect::<Vec<_>>(), want);
        // Each attempt is a cell from its start to the next one's: 200 ms of a 2 s axis.
        for (i, c) in uplink.iter().enumerate() {
            assert!(close(num(*c, "x"), LEFT + i as f64 * 0.1 * PLOT_W));
            assert!(close(num(*c, "width"), 0.1 * PLOT_W));
        }
        assert_eq!(title(uplink[1]), "uplink #2 at 0.200s: ok, RTT 31.0ms");
        assert_eq!(
            title(uplink[3]),
            "uplink #4 at 0.600s: lost: no echo reply within 1s"
        );
        let odd = cells(1);
        assert_eq!(
            odd.iter().map(result).collect::<Vec<_>>(),
            ["ok", "lost", "error", "ok"]
        );
        assert!(title(odd[2]).contains("Connection refused"));
    }

    #[test]
    fn assertion_windows_carry_their_verdicts() {
        let r = fixture();
        let svg = timeline_svg(&r);
        let doc = roxmltree::Document::parse(&svg).unwrap();
        let rows: Vec<_> = doc
            .descendants()
            .filter(|n| n.has_tag_name("g") && has_class(*n, "assertion"))
            .collect();
        let x = |t: f64| LEFT + t / 2.0 * PLOT_W;
        // (name, verdict, x, width): two probe windows and a metric's instant (a 4-unit mark).
        let want = [
            ("cut", "pass", x(0.6), x(0.8) - x(0.6)),
            ("back", "fail", x(0.0), x(2.0) - x(0.0)),
            ("backlog", "pass", x(1.5) - 2.0, 4.0),
        ];
        assert_eq!(rows.len(), want.len());
        for (row, (name, verdict, x0, w)) in rows.iter().zip(want) {
            assert_eq!(row.attribute("data-assertion"), Some(name));
            assert!(has_class(*row, verdict), "{name}: {:?}", classes(*row));
            let win = row
                .children()
                .find(|c| c.has_tag_name("rect"))
                .unwrap_or_else(|| panic!("{name} has no window"));
            assert_eq!(classes(win), ["window", verdict]);
            assert!(close(num(win, "x"), x0), "{name}: x {}", num(win, "x"));
            assert!(
                close(num(win, "width"), w),
                "{name}: width {}",
                num(win, "width")
            );
            let text = row.children().find(|c| c.has_tag_name("text")).unwrap();
            let shown: String = text
                .children()
                .filter(|c| c.is_text())
                .filter_map(|c| c.text())
                .collect();
            assert!(
                shown.contains(
                    &r.assertions
                        .iter()
                        .find(|v| v.name == name)
                        .unwrap()
                        .expected
                ),
                "{shown}"
            );
        }
        let back = title(rows[1].children().find(|c| c.has_tag_name("rect")).unwrap());
        assert!(back.starts_with("FAILED back: observed "), "{back}");
        assert!(
            back.contains("expected success_rate >= 99% (0s..2s)"),
            "{back}"
        );
    }

    #[test]
    fn workload_events_and_kills_are_markers() {
        let r = fixture();
        let svg = timeline_svg(&r);
        let doc = roxmltree::Document::parse(&svg).unwrap();
        let lane = doc
            .descendants()
            .find(|n| n.attribute("data-lane") == Some("sink @ sink"))
            .unwrap();
        let events: Vec<_> = lane
            .children()
            .filter(|c| c.has_tag_name("circle"))
            .map(|c| (classes(c)[2].to_string(), num(c, "cx")))
            .collect();
        let x = |t: f64| LEFT + t / 2.0 * PLOT_W;
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].0, "started");
        assert_eq!(events[1].0, "signalled");
        assert!(close(events[1].1, x(0.4)));
        assert_eq!(events[2].0, "restarting");
        let kill = lane.children().find(|c| c.has_tag_name("polygon")).unwrap();
        assert_eq!(classes(kill), ["action", "kill"]);
        assert_eq!(title(kill), "kill `sink` on sink at 0.400s");
    }

    #[test]
    fn names_from_the_yaml_are_escaped_and_the_page_is_well_formed() {
        let mut r = fixture();
        r.scenario = "<script>alert('x')</script>".into();
        r.assertions[0].name = "<a&b>".into();
        let page = html(&r);
        assert!(!page.contains("<a&b>"), "raw name in the page");
        assert!(!page.contains("<script"), "raw scenario name in the page");
        assert!(page.contains("&lt;a&amp;b&gt;"));
        // The whole page parses as XML, and the names read back as they were written.
        let doc = page_doc(&page);
        let h1: String = doc
            .descendants()
            .find(|n| n.has_tag_name("h1"))
            .unwrap()
            .descendants()
            .filter(|n| n.is_text())
            .filter_map(|n| n.text())
            .collect();
        assert_eq!(h1, "FAILED <script>alert('x')</script>");
        let probe_cells: Vec<&str> = doc
            .descendants()
            .filter(|n| n.has_tag_name("table") && n.attribute("class") == Some("probes"))
            .flat_map(|t| t.descendants().filter(|n| n.has_tag_name("td")))
            .filter_map(|td| td.text())
            .collect();
        assert!(probe_cells.contains(&"<a&b>"), "{probe_cells:?}");
        assert_eq!(
            esc("<a&b> \"q\" 'x'"),
            "&lt;a&amp;b&gt; &quot;q&quot; &#39;x&#39;"
        );
    }

    #[test]
    fn the_page_is_self_contained() {
        let page = html(&fixture());
        for banned in ["<script", "<link", " src=", "@import", "url("] {
            assert!(!page.contains(banned), "{banned} in the page");
        }
        // The only URLs are the XML namespaces, which nothing fetches.
        let urls: Vec<&str> = page
            .match_indices("http")
            .map(|(i, _)| page[i..].split('"').next().unwrap())
            .filter(|u| u.starts_with("http:") || u.starts_with("https:"))
            .collect();
        assert_eq!(
            urls,
            ["http://www.w3.org/1999/xhtml", "http://www.w3.org/2000/svg"]
        );
        assert!(page.contains(r#"content="default-src 'none'; style-src 'unsafe-inline'""#));
    }

    #[test]
    fn the_header_and_tables_state_the_facts() {
        let mut r = fixture();
        r.host_cpu = Some(crate::report::HostCpuReport {
            speed_per_core: 0.5,
            cpu_scale: 1.0,
            online_cpus: 2,
            source: "measured".into(),
        });
        let page = html(&r);
        let doc = page_doc(&page);
        let facts: Vec<String> = doc
            .descendants()
            .filter(|n| n.has_tag_name("dd") || n.has_tag_name("dt"))
            .map(|n| n.text().unwrap_or("").to_string())
            .collect();
        let fact = |k: &str| {
            let i = facts
                .iter()
                .position(|f| f == k)
                .unwrap_or_else(|| panic!("no {k}"));
            facts[i + 1].clone()
        };
        assert_eq!(fact("seed"), "7 (scenario)");
        assert_eq!(fact("target"), "netns");
        assert_eq!(fact("assertions"), "2 of 3 held");
        assert_eq!(
            fact("calibration"),
            "0.50 × a Raspberry Pi 5 core, 2 CPUs, cpuScale 1; measured"
        );
        let rows = |class: &str| {
            doc.descendants()
                .filter(|n| n.has_tag_name("table") && n.attribute("class") == Some(class))
                .flat_map(|t| t.descendants().filter(|n| n.has_tag_name("tr")))
                .count()
                - 1
        };
        assert_eq!(rows("schedule"), r.journal.len());
        assert_eq!(rows("assertions"), 3);
        assert_eq!(rows("probes"), 2);
        assert_eq!(rows("workloads"), 3);
    }

    /// A screenshot's pixels as RGB, with its width and height.
    fn pixels(png_bytes: &[u8]) -> (u32, u32, Vec<[u8; 3]>) {
        let mut dec = png::Decoder::new(std::io::Cursor::new(png_bytes));
        dec.set_transformations(png::Transformations::normalize_to_color8());
        let mut reader = dec.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        let n = info.color_type.samples();
        assert!(n >= 3, "a colour screenshot: {:?}", info.color_type);
        let px = buf[..info.buffer_size()]
            .chunks_exact(n)
            .map(|p| [p[0], p[1], p[2]])
            .collect();
        (info.width, info.height, px)
    }

    /// `fill` at `opacity` over the lane's background (#f6f8fa), as the page draws it.
    fn over_lane(fill: u32, opacity: f64) -> [u8; 3] {
        let bg = [0xf6, 0xf8, 0xfa];
        let c = [(fill >> 16) as u8, (fill >> 8) as u8, fill as u8];
        std::array::from_fn(|i| {
            (f64::from(c[i]) * opacity + f64::from(bg[i]) * (1.0 - opacity)).round() as u8
        })
    }

    fn count_near(px: &[[u8; 3]], want: [u8; 3]) -> usize {
        px.iter()
            .filter(|p| (0..3).all(|i| p[i].abs_diff(want[i]) <= 3))
            .count()
    }

    /// The page in a real browser: nothing it loads or runs complains on the console (the
    /// CSP would report any fetch), and the screenshot shows the timeline's bands, probe
    /// cells and verdict windows in their colours.
    #[test]
    fn headless_chromium_draws_the_timeline_without_console_messages() {
        if !crate::testing::chromium() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        // The console is read from Chromium's log: first show that a page breaking the same
        // policy is heard, so a silent log cannot pass for a clean page.
        let control = dir.path().join("control.html");
        std::fs::write(
            &control,
            r#"<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'"/></head><body><img src="https://example.invalid/x.png"/></body></html>"#,
        )
        .unwrap();
        let heard = crate::testing::headless_chromium(&control, dir.path(), &["--dump-dom"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            heard
                .console
                .iter()
                .any(|l| l.contains("Content Security Policy")),
            "Chromium's log shows no console message for a blocked image: {heard:?}"
        );

        let r = fixture();
        let page = dir.path().join("report.html");
        write_html(&r, &page).unwrap();
        let loaded = crate::testing::headless_chromium(&page, dir.path(), &["--dump-dom"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(loaded.console, Vec::<String>::new(), "console messages");
        // The DOM Chromium built holds the timeline with every probe attempt as a cell.
        let cells: usize = r.probes.iter().map(|p| p.samples.len()).sum();
        assert!(loaded.stdout.contains("<svg"), "{}", loaded.stdout);
        assert_eq!(
            loaded.stdout.matches(r#"<rect class="cell "#).count(),
            cells,
            "{}",
            loaded.stdout
        );

        // A screenshot of the page, and one of the same page without its chart: what the
        // first has beyond the second is what the timeline drew.
        let bare = dir.path().join("bare.html");
        std::fs::write(&bare, html(&r).replace(&timeline_svg(&r), "")).unwrap();
        let shoot = |page: &Path, name: &str| {
            let shot = dir.path().join(name);
            let arg = format!("--screenshot={}", shot.display());
            let took = crate::testing::headless_chromium(
                page,
                dir.path(),
                &[arg.as_str(), "--window-size=1400,1200"],
            )
            .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(took.console, Vec::<String>::new(), "console messages");
            let (w, h, px) = pixels(&std::fs::read(&shot).unwrap());
            assert_eq!((w, h), (1400, 1200));
            px
        };
        let (with, without) = (shoot(&page, "shot.png"), shoot(&bare, "bare.png"));
        // Colours as STYLE sets them; bands and windows are translucent over the lanes.
        for (what, hex, opacity, at_least) in [
            ("probe ok", 0x2e9d4f, 1.0, 5000),
            ("probe lost", 0xe3a008, 1.0, 1500),
            ("probe error", 0xd03b3b, 1.0, 1000),
            ("partition band", 0x8250df, 0.85, 1000),
            ("link band", 0xe16f24, 0.85, 2000),
            ("node-down band", 0x57606a, 0.85, 3000),
            ("held window", 0x2e9d4f, 0.75, 1000),
            ("failed window", 0xd03b3b, 0.8, 5000),
        ] {
            assert!(STYLE.contains(&format!("#{hex:06x}")), "{what}: #{hex:06x}");
            let want = if opacity < 1.0 {
                over_lane(hex, opacity)
            } else {
                [(hex >> 16) as u8, (hex >> 8) as u8, hex as u8]
            };
            let n = count_near(&with, want).saturating_sub(count_near(&without, want));
            assert!(
                n >= at_least,
                "{what}: the chart adds {n} pixels of {want:?} to the screenshot, expected at least {at_least}"
            );
        }
    }
}
