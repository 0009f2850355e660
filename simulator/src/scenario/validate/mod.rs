//! From the file a user wrote to a [`Plan`], finding every problem before anything is created.
//!
//! Checks, in order: YAML syntax and shape (unknown fields, bad units — reported by the
//! deserialiser with their position, plus a did-you-mean), names (unique, DNS-safe),
//! references (sites, nodes, profiles, links, workloads, probes — each with a suggestion),
//! the address pool, the timeline (times within the duration, exactly one action per entry,
//! overlapping actions that would undo each other, heals with nothing to heal), the
//! assertions' expressions, and finally what the selected target can do on this kernel.
//! All problems are collected and reported together.
//!
//! This module holds the entry points, the `Validator`'s sites, links, nodes, addresses,
//! selectors, workloads and capability checks; `timeline` simulates the timeline and
//! `checks` handles probes and assertions.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::Duration;

use ipnet::Ipv4Net;
use rand::RngExt;

use super::diag::{Diagnostic, Diagnostics, did_you_mean, unknown_hint};
use super::expect::{Bound, parse_bound, parse_expectation, parse_window};
use super::loc::{Loc, Pos, key_before};
use super::model::{self, Direction, DownMode, EventSpec, LinkSpec, Scenario};
use super::plan::{self, Action, ActionKind, Block, LinkParams, Mechanism, Plan, SeedSource};
use crate::profile::{ProfileSet, ProfileSpec};
use crate::units::Dur;
use crate::workload::apps;

pub use crate::caps::Capabilities;
use crate::caps::{Feature, Support};

/// Ports a Linux bridge takes (`BR_MAX_PORTS` − 1: port numbers are 10 bits, 0 is reserved).
pub const BRIDGE_PORTS: usize = 1023;

/// Options that come from the command line rather than the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub seed: Option<u64>,
    /// `--impairment`: which mechanism carries link impairments.
    pub impairment: Option<model::ImpairmentMode>,
    /// A lab that takes live faults (`edgesim up`): links are built for any impairment, not
    /// only the timeline's (the userspace emulator runs even when nothing is impaired yet).
    pub live: bool,
}

pub use crate::seed::rng_for;

/// Parses scenario text. Errors carry positions in `file`.
pub fn parse(file: &Path, text: &str) -> Result<Scenario, Diagnostics> {
    if is_blank_yaml(text) {
        let d = Diagnostic::new(
            Pos { line: 1, column: 1 },
            "the file is empty: a scenario file holds one Scenario document",
        )
        .hint(
            "start from a file in scenarios/ or the scenario reference in the README \
             (apiVersion: edgesim.dev/v1alpha1, kind: Scenario, metadata, spec)",
        );
        return Err(Diagnostics::new(file, text, vec![d]));
    }
    let opts = serde_saphyr::options! { with_snippet: false };
    serde_saphyr::from_str_with_options::<Scenario>(text, opts)
        .map_err(|e| Diagnostics::new(file, text, vec![yaml_diagnostic(&e)]))
}

/// True when YAML text holds no document content: only blank lines, comments and document
/// markers (`---`, `...`).
pub fn is_blank_yaml(text: &str) -> bool {
    text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---" || l == "..."
    })
}

/// The error inside serde-saphyr's snippet and alias wrappers.
pub fn innermost(mut e: &serde_saphyr::Error) -> &serde_saphyr::Error {
    while let serde_saphyr::Error::WithSnippet { error, .. }
    | serde_saphyr::Error::AliasError { error, .. } = e
    {
        e = error;
    }
    e
}

/// Line, column and message of a YAML error in a file that holds one `what` (`profile`,
/// `inventory`): a second document gets edgesim's wording, not the library's API advice.
pub fn yaml_place(e: &serde_saphyr::Error, file: &str, what: &str) -> (u64, u64, String) {
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    let message = match innermost(e) {
        serde_saphyr::Error::MultipleDocuments { .. } => {
            format!("a second YAML document starts here: one {what} per file")
        }
        _ => e.to_string().replace("<input>", file),
    };
    (line, column, message)
}

/// Turns a deserialiser error into a diagnostic with a did-you-mean where one applies.
pub fn yaml_diagnostic(e: &serde_saphyr::Error) -> Diagnostic {
    if let serde_saphyr::Error::MultipleDocuments { location, .. } = innermost(e) {
        // The library's own wording names its API ("use from_str_multiple"), not the user's fix.
        return Diagnostic::new(
            Pos {
                line: u32::try_from(location.line()).unwrap_or(0),
                column: u32::try_from(location.column()).unwrap_or(0),
            },
            "a second YAML document starts here: one scenario per file",
        )
        .hint("move each scenario after a `---` into a file of its own");
    }
    let full = e.to_string();
    let msg = match full.rfind(" at line ") {
        Some(i) => full[..i].to_string(),
        None => full.clone(),
    };
    let pos = e
        .location()
        .map(|l| Pos {
            line: u32::try_from(l.line()).unwrap_or(0),
            column: u32::try_from(l.column()).unwrap_or(0),
        })
        .unwrap_or(Pos::UNKNOWN);
    let mut d = Diagnostic::new(pos, msg.clone());
    // serde: "unknown field `x`, expected one of a, b" / "unknown variant `x`, expected ...".
    for what in ["unknown field `", "unknown variant `"] {
        if let Some(rest) = msg.strip_prefix(what)
            && let Some((word, tail)) = rest.split_once('`')
        {
            d = d.width(word.chars().count());
            let expected: Vec<String> = tail
                .split_once("expected")
                .map(|(_, l)| {
                    l.trim_start_matches(" one of")
                        .split([',', ' '])
                        .map(|w| w.trim().trim_matches('`').to_string())
                        .filter(|w| !w.is_empty() && w != "or")
                        .collect()
                })
                .unwrap_or_default();
            if let Some(c) = did_you_mean(word, expected.iter().map(String::as_str)) {
                d = d.hint(format!("did you mean `{c}`?"));
            } else if what.contains("field") && !expected.is_empty() {
                d = d.hint(format!("valid keys here: {}", expected.join(", ")));
            }
        }
    }
    d
}

/// A valid scenario's plan, with the warnings met while checking it: things to change (a
/// deprecated key) that do not make the file invalid. `warnings` is empty when there were none;
/// when it is not, show it to the user (it prints like errors, as `warning: …`).
#[derive(Debug, Clone)]
pub struct Validated {
    pub plan: Plan,
    pub warnings: Diagnostics,
}

/// Reads, parses and validates a scenario file into a plan.
pub fn load(
    file: &Path,
    profiles: &ProfileSet,
    caps: &Capabilities,
    ov: &Overrides,
) -> Result<Validated, LoadError> {
    let text = std::fs::read_to_string(file).map_err(|e| LoadError::Read {
        file: file.to_path_buf(),
        source: e,
    })?;
    let sc = parse(file, &text).map_err(LoadError::Invalid)?;
    build(file, &text, &sc, profiles, caps, ov).map_err(LoadError::Invalid)
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {}: {source}", file.display())]
    Read {
        file: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(Diagnostics),
}

/// Validates a parsed scenario and builds its plan. When the scenario is invalid, the
/// diagnostics hold every error and also the warnings, in file order.
pub fn build(
    file: &Path,
    text: &str,
    sc: &Scenario,
    profiles: &ProfileSet,
    caps: &Capabilities,
    ov: &Overrides,
) -> Result<Validated, Diagnostics> {
    let mut v = Validator {
        sc,
        text,
        mechanism: Mechanism::Kernel,
        file,
        profiles,
        caps,
        errs: Vec::new(),
        warnings: Vec::new(),
        site_ix: HashMap::new(),
        node_ix: HashMap::new(),
        nodes: Vec::new(),
        links: Vec::new(),
        link_ix: HashMap::new(),
    };
    let plan = v.run(file, ov);
    let sorted = |mut d: Vec<Diagnostic>| {
        d.sort_by_key(|d| (d.pos.line, d.pos.column));
        d.dedup();
        d
    };
    if v.errs.is_empty() {
        Ok(Validated {
            plan,
            warnings: Diagnostics::new(file, text, sorted(v.warnings)),
        })
    } else {
        let all = v.errs.into_iter().chain(v.warnings).collect();
        Err(Diagnostics::new(file, text, sorted(all)))
    }
}

struct Validator<'a> {
    sc: &'a Scenario,
    /// The scenario's text, to find keys (serde records only where values are).
    text: &'a str,
    mechanism: Mechanism,
    file: &'a Path,
    profiles: &'a ProfileSet,
    caps: &'a Capabilities,
    errs: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
    site_ix: HashMap<String, usize>,
    node_ix: HashMap<String, usize>,
    nodes: Vec<plan::Node>,
    links: Vec<plan::Link>,
    link_ix: HashMap<String, usize>,
}

fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn width(s: &str) -> usize {
    s.chars().count()
}

impl<'a> Validator<'a> {
    fn err(&mut self, pos: Pos, msg: impl Into<String>) -> &mut Diagnostic {
        self.errs.push(Diagnostic::new(pos, msg));
        self.errs.last_mut().expect("just pushed")
    }

    fn warn(&mut self, pos: Pos, msg: impl Into<String>) -> &mut Diagnostic {
        self.warnings.push(Diagnostic::warning(pos, msg));
        self.warnings.last_mut().expect("just pushed")
    }

    /// Reports an unknown reference `word` (a `what`, e.g. "site") at `pos`, suggesting the
    /// closest of `names`. `ctx` follows the message (e.g. " in probe `p`").
    /// Refuses what the target cannot do here (its capability table says so).
    fn needs(&mut self, pos: Pos, f: Feature, what: &str) {
        if self.caps.support(f) == Support::Unavailable {
            let how = self
                .caps
                .row(f)
                .map(|r| r.how.clone())
                .filter(|h| !h.is_empty());
            let target = self.caps.target.clone();
            let d = self.err(pos, format!("the `{target}` target cannot run {what} here"));
            d.hint = Some(
                how.unwrap_or_else(|| "`edgesim doctor` shows what each target can do".into()),
            );
        }
    }

    /// `image:` names a target-specific detail: such a scenario is not portable.
    fn needs_image(&mut self, pos: Pos) {
        if self.caps.support(Feature::ImageWorkload) == Support::Unavailable {
            let target = self.caps.target.clone();
            self.err(
                pos,
                format!("the `{target}` target cannot run `image:` workloads (a scenario that names an image is not portable)"),
            )
            .hint = Some("the `docker` and `kind` targets run images (`--target docker`); for `netns`, use `app:` or `command:`".into());
        }
    }

    fn unknown<'n>(
        &mut self,
        pos: Pos,
        what: &str,
        word: &str,
        ctx: &str,
        names: impl IntoIterator<Item = &'n str>,
    ) -> &mut Diagnostic {
        let names: Vec<&str> = names.into_iter().collect();
        let hint = unknown_hint(word, &format!("{what}s"), &names);
        let d = self.err(pos, format!("unknown {what} `{word}`{ctx}"));
        d.width = width(word);
        d.hint = hint;
        d
    }

    /// Reports `n` when a `what` of the same name came before (`seen` collects them).
    fn name_unique(&mut self, seen: &mut BTreeSet<String>, n: &Loc<String>, what: &str) {
        if !seen.insert(n.value.clone()) {
            self.err(n.pos, format!("duplicate {what} name `{}`", n.value));
        }
    }

    fn name_ok(&mut self, n: &Loc<String>, what: &str) {
        if !dns_label(n) {
            self.err(
                n.pos,
                format!("{what} name `{}` is not a valid name", n.value),
            )
            .hint = Some(
                "use lowercase letters, digits and `-` (at most 63 characters, not starting or ending with `-`)".into(),
            );
        }
    }

    fn run(&mut self, file: &Path, ov: &Overrides) -> Plan {
        let sc = self.sc;
        if sc.api_version.value != model::API_VERSION {
            self.err(
                sc.api_version.pos,
                format!("unsupported apiVersion `{}`", sc.api_version.value),
            )
            .hint = Some(format!("this edgesim reads `{}`", model::API_VERSION));
        }
        if sc.kind.value != model::KIND {
            let d = self.err(
                sc.kind.pos,
                format!("kind is `{}`, expected `Scenario`", sc.kind.value),
            );
            if sc.kind.value == "HardwareProfile" {
                d.hint = Some("this is a hardware profile: put it in hardware-profiles/ or under spec.profiles".into());
            }
        }
        self.name_ok(&sc.metadata.name, "scenario");
        let spec = &sc.spec;
        let (seed, seed_source) = match (ov.seed, spec.seed) {
            (Some(s), _) => (s, SeedSource::CommandLine),
            (None, Some(s)) => (s, SeedSource::Scenario),
            (None, None) => (rand::rng().random::<u64>() >> 12, SeedSource::Drawn),
        };
        self.mechanism = self.mechanism(ov);
        let duration = spec.duration.0;
        if duration.is_zero() {
            self.err(spec.duration.pos, "duration must be greater than zero");
        }
        let mtu = spec.network.mtu.as_ref().map_or(1500, |m| {
            if !(576..=9000).contains(&m.value) {
                self.err(m.pos, format!("mtu {} is outside 576..9000", m.value));
            }
            m.value
        });

        let sites = self.sites();
        self.links_of_sites(&sites);
        self.nodes(&sites);
        let pool = self.addresses(&sites);
        let site_plans: Vec<plan::Site> = sites
            .iter()
            .zip(pool.1.iter())
            .map(|(name, (subnet, gw))| plan::Site {
                name: name.clone(),
                subnet: *subnet,
                gateway: *gw,
            })
            .collect();
        let workloads = self.workloads();
        let mut p = Plan {
            name: sc.metadata.name.value.clone(),
            description: sc.metadata.description.clone(),
            file: file.to_path_buf(),
            seed,
            seed_source,
            duration,
            pool: pool.0,
            mtu,
            mechanism: self.mechanism,
            emulate_arch: self.sc.spec.emulate_arch,
            live: ov.live,
            cpu_scale: match &spec.cpu_scale {
                None => 1.0,
                Some(x) if x.value > 0.0 && x.value <= 1.0 => x.value,
                Some(x) => {
                    self.err(x.pos, format!("cpuScale {} is outside (0, 1]", x.value));
                    1.0
                }
            },
            sites: site_plans,
            links: std::mem::take(&mut self.links),
            nodes: self.nodes.clone(),
            workloads,
            actions: Vec::new(),
            probes: Vec::new(),
            assertions: Vec::new(),
        };
        self.capabilities(&p);
        p.actions = self.timeline(&p);
        p.probes = self.probes(&p);
        p.assertions = self.assertions(&p);
        self.site_sizes(&p);
        p
    }

    /// Every site is one Linux bridge in the fabric, and a bridge takes at most
    /// [`BRIDGE_PORTS`] ports (the kernel answers "Exchange full" past that): one per node, and
    /// one more for the userspace link emulator when it runs. Points at the node entry that
    /// goes over.
    fn site_sizes(&mut self, p: &Plan) {
        let extra = usize::from(p.uses_emulator());
        let most = BRIDGE_PORTS - extra;
        let sc = self.sc;
        let mut seen = vec![0usize; p.sites.len()];
        for n in &sc.spec.nodes {
            let Some(&si) = self.site_ix.get(&n.site.value) else {
                continue;
            };
            let before = seen[si];
            seen[si] += n.count.as_ref().map_or(1, |c| c.value as usize);
            if before <= most && seen[si] > most {
                let pos = n.count.as_ref().map_or(n.name.pos, |c| c.pos);
                let total = p.nodes.iter().filter(|x| x.site == si).count();
                self.err(
                    pos,
                    format!(
                        "site `{}` has {total} nodes; a site holds at most {most} \
                         (its Linux bridge takes {BRIDGE_PORTS} ports{})",
                        n.site.value,
                        if extra > 0 {
                            ", one of them for the userspace link emulator"
                        } else {
                            ""
                        }
                    ),
                )
                .hint = Some(format!(
                    "spread the nodes over more sites, at most {most} in each"
                ));
            }
        }
    }

    /// Which mechanism carries the link impairments: the userspace emulator when asked for
    /// (or for a deterministic run), netem when asked for, else netem where the kernel has
    /// it and the emulator elsewhere.
    fn mechanism(&mut self, ov: &Overrides) -> Mechanism {
        use model::ImpairmentMode as M;
        let spec = &self.sc.spec;
        let from_file = spec.impairment.as_ref();
        let requested = ov
            .impairment
            .or(from_file.map(|m| m.value))
            .unwrap_or_default();
        let pos = from_file.map_or(Pos::UNKNOWN, |m| m.pos);
        let deterministic = spec.deterministic.as_ref().filter(|d| d.value);
        let m = match (requested, deterministic) {
            (M::Kernel, Some(d)) => {
                self.err(d.pos, "a deterministic run needs the userspace link emulator, but `impairment: kernel` was asked for")
                    .hint = Some("netem draws from the kernel's random generator and cannot replay a run; drop `impairment: kernel`".into());
                Mechanism::Kernel
            }
            (_, Some(_)) | (M::Userspace, None) => Mechanism::Userspace,
            (M::Kernel, None) => Mechanism::Kernel,
            (M::Auto, None) if self.caps.netem() || !self.caps.userspace() => Mechanism::Kernel,
            (M::Auto, None) => Mechanism::Userspace,
        };
        if m == Mechanism::Userspace && !self.caps.userspace() {
            self.err(
                pos,
                format!(
                    "the `{}` target cannot run the userspace link emulator",
                    self.caps.target
                ),
            );
        }
        m
    }

    fn sites(&mut self) -> Vec<String> {
        let mut names = Vec::new();
        if self.sc.spec.sites.is_empty() {
            self.err(Pos::UNKNOWN, "the scenario has no sites").hint =
                Some("add e.g. `sites: {cloud: {}}`".into());
        }
        for (i, name) in self.sc.spec.sites.keys().enumerate() {
            self.name_ok(name, "site");
            self.site_ix.insert(name.value.clone(), i);
            names.push(name.value.clone());
        }
        names
    }

    fn site_ref(&mut self, r: &Loc<String>, ctx: &str) -> Option<usize> {
        if let Some(&i) = self.site_ix.get(&r.value) {
            return Some(i);
        }
        let sc = self.sc;
        self.unknown(
            r.pos,
            "site",
            r,
            &format!(" {ctx}"),
            sc.spec.sites.keys().map(|k| k.value.as_str()),
        );
        None
    }

    fn params(&mut self, base: &LinkSpec, over: Option<&model::Impairment>) -> LinkParams {
        let mut p = LinkParams::default();
        p.set_from(&base.impairment());
        if let Some(o) = over {
            p.set_from(o);
        }
        p
    }

    /// Checks that one direction's parameters make sense together.
    fn check_params(&mut self, p: &LinkParams, pos: Pos, what: &str) {
        if let (Some(j), d) = (p.jitter, p.delay.unwrap_or_default())
            && j > d
        {
            self.err(
                pos,
                format!(
                    "{what}: jitter {} is larger than the delay {}",
                    Dur(j),
                    Dur(d)
                ),
            )
            .hint = Some("jitter varies the delay around its mean; it cannot exceed it".into());
        }
        if p.reorder > 0.0 && !p.needs_delay() {
            self.err(
                pos,
                format!("{what}: `reorder` needs a `delay` (reordered packets skip it)"),
            );
        }
        if p.loss > 0.0 && p.gilbert_elliott.is_some() {
            self.err(
                pos,
                format!("{what}: give `loss` or `gilbertElliott`, not both"),
            );
        }
        if p.limit == Some(0) {
            self.err(pos, format!("{what}: `limit` must be at least 1 packet"));
        }
        if p.reorder_gap > 0 && p.reorder == 0.0 {
            self.err(pos, format!("{what}: `reorderGap` goes with `reorder`"));
        }
    }

    fn add_link(&mut self, name: String, pos: Pos, a: usize, b: usize, l: &LinkSpec) {
        if a == b {
            self.err(
                pos,
                format!(
                    "link `{name}` joins site `{}` to itself",
                    self.sc
                        .spec
                        .sites
                        .keys()
                        .nth(a)
                        .map(|k| k.value.as_str())
                        .unwrap_or("?")
                ),
            );
            return;
        }
        if let Some(other) = self
            .links
            .iter()
            .find(|x| (x.a == a && x.b == b) || (x.a == b && x.b == a))
        {
            let other = other.name.clone();
            self.err(
                pos,
                format!("link `{name}` joins the same two sites as link `{other}`"),
            )
            .hint = Some("two sites are joined by one link; put both directions' impairments on it with `up`/`down`".into());
            return;
        }
        if self.link_ix.contains_key(&name) {
            self.err(pos, format!("duplicate link name `{name}`"));
            return;
        }
        let up = self.params(l, l.up.as_ref());
        let down = self.params(l, l.down.as_ref());
        self.check_params(&up, pos, &format!("link `{name}` (up)"));
        self.check_params(&down, pos, &format!("link `{name}` (down)"));
        self.link_ix.insert(name.clone(), self.links.len());
        self.links.push(plan::Link {
            name,
            a,
            b,
            up,
            down,
        });
    }

    fn links_of_sites(&mut self, sites: &[String]) {
        let sc = self.sc;
        for (i, (sname, site)) in sc.spec.sites.iter().enumerate() {
            let Some(up) = &site.uplink else { continue };
            if let Some(b) = &up.between {
                self.err(
                    b.pos,
                    "an uplink names its parent with `site`, not `between`",
                )
                .hint = Some("`between` is for entries of `spec.links`".into());
            }
            if let Some(n) = &up.name {
                self.err(
                    n.pos,
                    format!("an uplink is always named `{}-uplink`", sname.value),
                );
            }
            let Some(parent) = &up.site else {
                self.err(
                    sname.pos,
                    format!(
                        "the uplink of site `{}` does not say which site it joins",
                        sname.value
                    ),
                )
                .hint = Some("add `site: <parent site>` to the uplink".into());
                continue;
            };
            if let Some(j) =
                self.site_ref(parent, &format!("in the uplink of site `{}`", sname.value))
            {
                self.add_link(format!("{}-uplink", sites[i]), parent.pos, i, j, up);
            }
        }
        for l in &sc.spec.links {
            if let Some(s) = &l.site {
                self.err(
                    s.pos,
                    "entries of `links` name their sites with `between: [a, b]`",
                );
                continue;
            }
            let Some(between) = &l.between else {
                self.err(Pos::UNKNOWN, "a link needs `between: [site-a, site-b]`");
                continue;
            };
            if between.len() != 2 {
                self.err(
                    between.pos,
                    format!(
                        "`between` names {} sites; a link joins exactly two",
                        between.len()
                    ),
                );
                continue;
            }
            let a = self.site_ref(&between[0], "in `links`");
            let b = self.site_ref(&between[1], "in `links`");
            let name = match &l.name {
                Some(n) => {
                    self.name_ok(n, "link");
                    n.value.clone()
                }
                None => format!("{}-{}", between[0].value, between[1].value),
            };
            if let (Some(a), Some(b)) = (a, b) {
                self.add_link(name, between.pos, a, b, l);
            }
        }
    }

    fn nodes(&mut self, _sites: &[String]) {
        let sc = self.sc;
        let mut inline: BTreeMap<String, &ProfileSpec> = BTreeMap::new();
        for (name, p) in &sc.spec.profiles {
            self.name_ok(name, "profile");
            if let Err(problems) = p.validate() {
                for pr in problems {
                    self.err(name.pos, format!("profile `{}`: {pr}", name.value));
                }
            }
            inline.insert(name.value.clone(), p);
        }
        if sc.spec.nodes.is_empty() {
            self.err(Pos::UNKNOWN, "the scenario has no nodes");
        }
        for n in &sc.spec.nodes {
            self.name_ok(&n.name, "node");
            let site = self.site_ref(&n.site, &format!("for node `{}`", n.name.value));
            let profile: Option<ProfileSpec> = match inline.get(&n.profile.value) {
                Some(p) => Some((*p).clone()),
                None => match self.profiles.get(&n.profile) {
                    Some(p) => Some(p.clone()),
                    None => {
                        let mut all: Vec<String> =
                            self.profiles.names().map(str::to_string).collect();
                        all.extend(inline.keys().cloned());
                        all.sort();
                        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
                        self.unknown(n.profile.pos, "profile", &n.profile, "", refs);
                        None
                    }
                },
            };
            let names: Vec<String> = match &n.count {
                None => vec![n.name.value.clone()],
                Some(c) if c.value == 0 => {
                    self.err(c.pos, "count must be at least 1");
                    vec![]
                }
                Some(c) if c.value > 4000 => {
                    self.err(c.pos, format!("count {} is more than 4000 nodes", c.value));
                    vec![]
                }
                Some(c) => (1..=c.value)
                    .map(|i| format!("{}-{i}", n.name.value))
                    .collect(),
            };
            for name in names {
                if self.node_ix.contains_key(&name) {
                    self.err(n.name.pos, format!("duplicate node name `{name}`"))
                        .hint = Some("node names (after `count` expansion) must be unique".into());
                    continue;
                }
                if name.len() > 63 {
                    self.err(
                        n.name.pos,
                        format!("node name `{name}` is longer than 63 characters"),
                    );
                }
                if let (Some(site), Some(profile)) = (site, profile.clone()) {
                    self.node_ix.insert(name.clone(), self.nodes.len());
                    self.nodes.push(plan::Node {
                        name,
                        site,
                        profile_name: n.profile.value.clone(),
                        profile,
                        addr: Ipv4Addr::UNSPECIFIED,
                        labels: n.labels.clone(),
                    });
                }
            }
        }
    }

    /// Carves one subnet per site out of the pool (at least a /24, more when a site has more
    /// than 253 nodes), in site order; the first address is the site's gateway.
    fn addresses(&mut self, sites: &[String]) -> (Ipv4Net, Vec<(Ipv4Net, Ipv4Addr)>) {
        let default_pool: Ipv4Net = "10.90.0.0/16".parse().expect("valid literal");
        let pool = match &self.sc.spec.network.pool {
            None => default_pool,
            Some(p) => match p.value.parse::<Ipv4Net>() {
                Ok(n) if n.addr().is_private() => n.trunc(),
                Ok(_) => {
                    self.err(
                        p.pos,
                        format!(
                            "address pool `{}` is not a private (RFC 1918) range",
                            p.value
                        ),
                    )
                    .hint = Some(
                        "use a range inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16".into(),
                    );
                    default_pool
                }
                Err(_) => {
                    self.err(p.pos, format!("`{}` is not an IPv4 prefix", p.value))
                        .hint = Some("write e.g. `10.90.0.0/16`".into());
                    default_pool
                }
            },
        };
        let mut counts = vec![0usize; sites.len()];
        for n in &self.nodes {
            counts[n.site] += 1;
        }
        let mut out = Vec::new();
        let mut next: u64 = u64::from(u32::from(pool.network()));
        let end: u64 = u64::from(u32::from(pool.broadcast())) + 1;
        let mut exhausted = false;
        for (si, count) in counts.iter().enumerate() {
            let need = (*count as u64) + 3; // network, gateway, broadcast
            let bits = (64 - (need - 1).leading_zeros()).max(8);
            let size = 1u64 << bits;
            let start = next.div_ceil(size) * size;
            if start + size > end || bits > 24 {
                exhausted = true;
                out.push((pool, pool.network()));
                continue;
            }
            let net = Ipv4Net::new(Ipv4Addr::from(start as u32), (32 - bits) as u8)
                .expect("prefix length in range");
            let gw = Ipv4Addr::from(start as u32 + 1);
            out.push((net, gw));
            for (host, n) in
                (start as u32 + 2..).zip(self.nodes.iter_mut().filter(|n| n.site == si))
            {
                n.addr = Ipv4Addr::from(host);
            }
            next = start + size;
        }
        if exhausted {
            let pos = self
                .sc
                .spec
                .network
                .pool
                .as_ref()
                .map_or(Pos::UNKNOWN, |p| p.pos);
            self.err(
                pos,
                format!(
                    "address pool {pool} is too small for {} sites and {} nodes",
                    sites.len(),
                    self.nodes.len()
                ),
            )
            .hint = Some("each site takes at least a /24; set a larger `spec.network.pool`".into());
        }
        (pool, out)
    }

    /// Resolves node selectors: exact names, globs, `site/NAME`, `label/KEY=VALUE`, `all`.
    fn select(&mut self, sels: &[Loc<String>], ctx: &str) -> Option<Vec<usize>> {
        let mut out = BTreeSet::new();
        let mut ok = true;
        for s in sels {
            let before = out.len();
            let v = s.value.trim();
            if v == "all" || v == "*" {
                out.extend(0..self.nodes.len());
            } else if let Some(site) = v.strip_prefix("site/") {
                let r = Loc::new(
                    site.to_string(),
                    Pos {
                        line: s.pos.line,
                        column: s.pos.column + 5,
                    },
                );
                match self.site_ref(&r, ctx) {
                    Some(si) => out.extend(
                        self.nodes
                            .iter()
                            .enumerate()
                            .filter(|(_, n)| n.site == si)
                            .map(|(i, _)| i),
                    ),
                    None => ok = false,
                }
            } else if let Some(lbl) = v.strip_prefix("label/") {
                let (k, val) = lbl.split_once('=').unwrap_or((lbl, ""));
                out.extend(
                    self.nodes
                        .iter()
                        .enumerate()
                        .filter(|(_, n)| {
                            n.labels.get(k).is_some_and(|x| val.is_empty() || x == val)
                        })
                        .map(|(i, _)| i),
                );
            } else if v.contains(['*', '?', '[']) {
                match globset::Glob::new(v) {
                    Ok(g) => {
                        let m = g.compile_matcher();
                        out.extend(
                            self.nodes
                                .iter()
                                .enumerate()
                                .filter(|(_, n)| m.is_match(&n.name))
                                .map(|(i, _)| i),
                        );
                    }
                    Err(e) => {
                        self.err(s.pos, format!("bad pattern `{v}` {ctx}: {e}"));
                        ok = false;
                        continue;
                    }
                }
            } else if let Some(&i) = self.node_ix.get(v) {
                out.insert(i);
            } else {
                let names: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                let mut h = unknown_hint(v, "nodes", &refs);
                if self.site_ix.contains_key(v) {
                    h = Some(format!(
                        "`{v}` is a site: write `site/{v}` to select its nodes"
                    ));
                }
                let d = self.err(s.pos, format!("unknown node `{v}` {ctx}"));
                d.width = width(v);
                d.hint = h;
                ok = false;
                continue;
            }
            if out.len() == before && ok && !v.is_empty() {
                // A selector that adds nothing new: fine if it matched nodes already chosen;
                // an error if it matches nothing at all.
                if self.matches_none(v) {
                    self.err(s.pos, format!("`{v}` {ctx} selects no node"))
                        .width = width(v);
                    ok = false;
                }
            }
        }
        if sels.is_empty() {
            let pos = Pos::UNKNOWN;
            self.err(pos, format!("empty node list {ctx}"));
            ok = false;
        }
        ok.then(|| out.into_iter().collect())
    }

    fn matches_none(&self, v: &str) -> bool {
        if let Some(lbl) = v.strip_prefix("label/") {
            let (k, val) = lbl.split_once('=').unwrap_or((lbl, ""));
            return !self
                .nodes
                .iter()
                .any(|n| n.labels.get(k).is_some_and(|x| val.is_empty() || x == val));
        }
        if let Some(site) = v.strip_prefix("site/") {
            return self
                .site_ix
                .get(site)
                .is_some_and(|&si| !self.nodes.iter().any(|n| n.site == si));
        }
        if v.contains(['*', '?', '[']) {
            return globset::Glob::new(v)
                .map(|g| {
                    let m = g.compile_matcher();
                    !self.nodes.iter().any(|n| m.is_match(&n.name))
                })
                .unwrap_or(false);
        }
        false
    }

    /// A workload's node selectors and the key they were written under: `nodes`, or `on`, its
    /// deprecated spelling (accepted with a warning until the format leaves `v1alpha1`).
    fn workload_selectors(
        &mut self,
        w: &'a model::WorkloadSpec,
    ) -> Option<(&'a [Loc<String>], &'static str)> {
        let name = &w.name.value;
        // Point at the key `on` itself where it can be found, else at its value.
        let text = self.text;
        let on_pos = |on: &Loc<_>| key_before(text, on.pos, "on").map_or((on.pos, 1), |p| (p, 2));
        match (&w.nodes, &w.on) {
            (Some(n), None) => Some((&n.value, "nodes")),
            (None, Some(on)) => {
                let (pos, width) = on_pos(on);
                let d = self.warn(
                    pos,
                    format!("workload `{name}`: the key `on` is deprecated; write `nodes`"),
                );
                d.width = width;
                d.hint = Some("YAML 1.1 parsers (PyYAML, Ansible, Go's yaml.v2, kubectl and kustomize) read the key `on` as `true`; `on` is accepted until the format leaves v1alpha1".into());
                Some((&on.value, "on"))
            }
            (Some(_), Some(on)) => {
                let (pos, width) = on_pos(on);
                let d = self.err(
                    pos,
                    format!("workload `{name}` gives both `nodes` and `on`"),
                );
                d.width = width;
                d.hint =
                    Some("`on` is the deprecated spelling of `nodes`: keep `nodes` only".into());
                None
            }
            (None, None) => {
                let d = self.err(w.name.pos, format!("workload `{name}` has no `nodes`"));
                d.width = width(name);
                d.hint = Some("select the nodes it runs on, e.g. `nodes: [gw-1]`, `nodes: [\"gw-*\"]`, `nodes: [site/edge]` or `nodes: [all]`".into());
                None
            }
        }
    }

    fn workloads(&mut self) -> Vec<plan::Workload> {
        let sc = self.sc;
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        if sc.spec.emulate_arch
            && let Some(w) = sc.spec.workloads.first()
        {
            self.needs(w.name.pos, Feature::Arm64Emulation, "`emulateArch: true`");
        }
        for w in &sc.spec.workloads {
            self.name_ok(&w.name, "workload");
            self.name_unique(&mut seen, &w.name, "workload");
            let nodes = self
                .workload_selectors(w)
                .and_then(|(sels, key)| {
                    self.select(sels, &format!("in `{key}` of workload `{}`", w.name.value))
                })
                .unwrap_or_default();
            let given = [w.command.is_some(), w.app.is_some(), w.image.is_some()];
            let app = match (&w.app, given.iter().filter(|g| **g).count()) {
                (Some(a), 1) => match apps::find(a) {
                    Some(app) => Some(app),
                    None => {
                        self.unknown(a.pos, "app", a, "", apps::APPS.iter().map(|a| a.name));
                        None
                    }
                },
                (_, 1) => None,
                _ => {
                    self.err(
                        w.name.pos,
                        format!(
                            "workload `{}` needs exactly one of `command`, `app` or `image`",
                            w.name.value
                        ),
                    )
                    .hint = Some(format!(
                        "apps: {}",
                        apps::APPS
                            .iter()
                            .map(|a| a.name)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                    None
                }
            };
            // What runs, target-neutral: each target resolves it (a host binary, an image)
            // in its own validation, before anything is created.
            let (run, pos) = match (&w.command, &w.app, &w.image, app) {
                (Some(c), _, _, _) => {
                    if !w.args.is_empty() {
                        self.err(
                            c.pos,
                            "`args` goes with `app` or `image`; put a command's arguments in `command`",
                        );
                    }
                    let argv = match &c.value {
                        model::CommandLine::Line(l) => match shlex::split(l) {
                            Some(v) => v,
                            None => {
                                self.err(
                                    c.pos,
                                    "the command line has an unterminated quote or escape",
                                );
                                vec![]
                            }
                        },
                        model::CommandLine::Args(a) => a.clone(),
                    };
                    if argv.is_empty() || argv[0].is_empty() {
                        self.err(
                            c.pos,
                            format!("workload `{}` has an empty command", w.name.value),
                        );
                    }
                    self.needs(c.pos, Feature::CommandWorkload, "`command:` workloads");
                    (plan::Run::Command { argv }, c.pos)
                }
                (None, Some(a), _, Some(app)) => {
                    self.needs(a.pos, Feature::AppWorkload, "`app:` workloads");
                    (
                        plan::Run::App {
                            app: app.name.to_string(),
                            args: w.args.clone(),
                        },
                        a.pos,
                    )
                }
                (None, None, Some(i), _) => {
                    if i.value.trim().is_empty() || i.value.chars().any(char::is_whitespace) {
                        self.err(i.pos, format!("`{}` is not an image reference", i.value));
                    }
                    self.needs_image(i.pos);
                    (
                        plan::Run::Image {
                            image: i.value.clone(),
                            args: w.args.clone(),
                        },
                        i.pos,
                    )
                }
                _ => (plan::Run::Command { argv: vec![] }, w.name.pos),
            };
            for k in w.env.keys() {
                if k.is_empty() || k.contains('=') || k.contains('\0') {
                    self.err(
                        w.name.pos,
                        format!("environment variable name `{k}` is invalid"),
                    );
                }
            }
            let port = w.port.as_ref().map(|p| p.value).or(app.map(|a| a.port));
            if let Some(p) = &w.port
                && p.value == 0
            {
                self.err(p.pos, "port must not be 0");
            }
            let metrics = match &w.metrics {
                Some(m) => {
                    let mport = m.port.as_ref().map(|p| p.value).or(port);
                    if mport.is_none_or(|p| p == 0) {
                        self.err(
                            w.name.pos,
                            format!(
                                "workload `{}`: give `metrics.port` (or the workload's `port`)",
                                w.name.value
                            ),
                        );
                    }
                    let path = m.path.clone().unwrap_or_else(|| match m.format {
                        model::MetricsFormat::Prometheus => "/metrics".into(),
                        model::MetricsFormat::Json => "/status".into(),
                    });
                    if !path.starts_with('/') {
                        self.err(
                            w.name.pos,
                            format!("metrics path `{path}` must start with `/`"),
                        );
                    }
                    Some(plan::MetricsEndpoint {
                        port: mport.unwrap_or(0),
                        path,
                        format: m.format,
                    })
                }
                // Every app serves Prometheus text on its port.
                None => app.map(|a| plan::MetricsEndpoint {
                    port: port.unwrap_or(a.port),
                    path: "/metrics".into(),
                    format: model::MetricsFormat::Prometheus,
                }),
            };
            let mut env = w.env.clone();
            if let Some(p) = port {
                env.entry("PORT".into()).or_insert_with(|| p.to_string());
            }
            out.push(plan::Workload {
                name: w.name.value.clone(),
                run,
                pos,
                port,
                env,
                restart: w.restart,
                restart_delay: w
                    .restart_delay
                    .as_ref()
                    .map_or(Duration::from_secs(1), |d| d.0),
                metrics,
                ready_port: w.ready_port.as_ref().map(|p| p.value).or(app.and(port)),
                ready_timeout: w
                    .ready_timeout
                    .as_ref()
                    .map_or(Duration::from_secs(10), |d| d.0),
                nodes,
                program: None,
            });
        }
        out
    }

    /// Impairments the target cannot do on this kernel are errors, pointed at where they are
    /// written.
    fn capabilities(&mut self, p: &Plan) {
        if self.caps.netem() || p.mechanism == Mechanism::Userspace {
            return;
        }
        // Fields that need netem (or the userspace emulator); rate, loss and cuts work
        // everywhere.
        const NEEDS: [&str; 10] = [
            "delay",
            "jitter",
            "distribution",
            "correlation",
            "lossCorrelation",
            "gilbertElliott",
            "duplicate",
            "corrupt",
            "reorder",
            "limit",
        ];
        let sc = self.sc;
        let mut imps: Vec<model::Impairment> = Vec::new();
        for l in sc
            .spec
            .sites
            .values()
            .filter_map(|s| s.uplink.as_ref())
            .chain(&sc.spec.links)
        {
            imps.push(l.impairment());
            imps.extend(l.up.iter().cloned());
            imps.extend(l.down.iter().cloned());
        }
        imps.extend(
            sc.spec
                .timeline
                .iter()
                .filter_map(|e| e.impair.as_ref())
                .map(|i| i.impairment()),
        );
        let spots: Vec<(Pos, &'static str)> = imps
            .iter()
            .flat_map(|i| i.present())
            .filter(|(name, _)| NEEDS.contains(name))
            .map(|(name, pos)| (pos, name))
            .collect();
        // Why the userspace emulator does not step in: the scenario asked for the kernel, or
        // the target cannot run it at all.
        let why = if self.caps.userspace() {
            "`impairment: kernel` keeps the `{t}` target from using the userspace emulator"
        } else {
            "the `{t}` target cannot run the userspace emulator"
        }
        .replace("{t}", &self.caps.target);
        for (pos, what) in spots {
            let hint = self.caps.netem_hint.clone();
            self.err(
                pos,
                format!("link {what} needs netem, which this kernel lacks, and {why}"),
            )
            .hint = Some(hint);
        }
    }
}

mod checks;
mod timeline;

pub use timeline::{TraceRow, parse_trace, signal_number};
