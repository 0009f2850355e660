//! From the file a user wrote to a [`Plan`], finding every problem before anything is created.
//!
//! Checks, in order: YAML syntax and shape (unknown fields, bad units — reported by the
//! deserialiser with their position, plus a did-you-mean), names (unique, DNS-safe),
//! references (sites, nodes, profiles, links, workloads, probes — each with a suggestion),
//! the address pool, the timeline (times within the duration, exactly one action per entry,
//! overlapping actions that would undo each other, heals with nothing to heal), the
//! assertions' expressions, and finally what the selected target can do on this kernel.
//! All problems are collected and reported together.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::Duration;

use ipnet::Ipv4Net;
use rand::{RngExt, SeedableRng};

use super::diag::{Diagnostic, Diagnostics, did_you_mean, unknown_hint};
use super::expect::{Bound, parse_bound, parse_expectation, parse_window};
use super::loc::{Loc, Pos};
use super::model::{self, Direction, DownMode, EventSpec, LinkSpec, Scenario};
use super::plan::{self, Action, ActionKind, Block, LinkParams, Mechanism, Plan, SeedSource};
use crate::profile::{ProfileSet, ProfileSpec};
use crate::units::Dur;
use crate::workload::apps;

/// What the selected target can do on this machine, as far as validation is concerned.
#[derive(Debug, Clone)]
pub struct Capabilities {
    /// Target name, for messages (`netns`, `docker`, …).
    pub target: String,
    /// Whether the kernel offers netem (delay, jitter, burst loss, duplication, corruption,
    /// reordering in the kernel).
    pub netem: bool,
    /// Whether the userspace link emulator can run here.
    pub userspace: bool,
    /// Why the kernel mechanism cannot do those impairments (shown as a hint).
    pub netem_hint: String,
}

impl Capabilities {
    /// Everything possible: for checks that do not depend on a machine (tests, `plan`).
    pub fn all(target: &str) -> Self {
        Capabilities {
            target: target.into(),
            netem: true,
            userspace: true,
            netem_hint: String::new(),
        }
    }
}

/// Options that come from the command line rather than the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub seed: Option<u64>,
    /// `--impairment`: which mechanism carries link impairments.
    pub impairment: Option<model::ImpairmentMode>,
}

/// Derives an independent, stable random stream for one consumer from the run's seed and a
/// stable name, so adding a consumer never shifts the draws of another.
pub fn rng_for(seed: u64, name: &str) -> rand_chacha::ChaCha8Rng {
    // FNV-1a: stable across Rust releases, unlike `DefaultHasher`.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&h.to_le_bytes());
    key[16..24].copy_from_slice(b"edgesim\0");
    rand_chacha::ChaCha8Rng::from_seed(key)
}

/// Parses scenario text. Errors carry positions in `file`.
pub fn parse(file: &Path, text: &str) -> Result<Scenario, Diagnostics> {
    let opts = serde_saphyr::options! { with_snippet: false };
    serde_saphyr::from_str_with_options::<Scenario>(text, opts)
        .map_err(|e| Diagnostics::new(file, text, vec![yaml_diagnostic(&e)]))
}

/// Turns a deserialiser error into a diagnostic with a did-you-mean where one applies.
pub fn yaml_diagnostic(e: &serde_saphyr::Error) -> Diagnostic {
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

/// Reads, parses and validates a scenario file into a plan.
pub fn load(
    file: &Path,
    profiles: &ProfileSet,
    caps: &Capabilities,
    ov: &Overrides,
) -> Result<Plan, LoadError> {
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

/// Validates a parsed scenario and builds its plan.
pub fn build(
    file: &Path,
    text: &str,
    sc: &Scenario,
    profiles: &ProfileSet,
    caps: &Capabilities,
    ov: &Overrides,
) -> Result<Plan, Diagnostics> {
    let mut v = Validator {
        sc,
        mechanism: Mechanism::Kernel,
        file,
        profiles,
        caps,
        errs: Vec::new(),
        site_ix: HashMap::new(),
        node_ix: HashMap::new(),
        nodes: Vec::new(),
        links: Vec::new(),
        link_ix: HashMap::new(),
    };
    let plan = v.run(file, ov);
    if v.errs.is_empty() {
        Ok(plan)
    } else {
        let mut errs = v.errs;
        errs.sort_by_key(|d| (d.pos.line, d.pos.column));
        errs.dedup();
        Err(Diagnostics::new(file, text, errs))
    }
}

struct Validator<'a> {
    sc: &'a Scenario,
    mechanism: Mechanism,
    file: &'a Path,
    profiles: &'a ProfileSet,
    caps: &'a Capabilities,
    errs: Vec<Diagnostic>,
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

    /// Reports an unknown reference `word` (a `what`, e.g. "site") at `pos`, suggesting the
    /// closest of `names`. `ctx` follows the message (e.g. " in probe `p`").
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
        p
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
            (M::Auto, None) if self.caps.netem || !self.caps.userspace => Mechanism::Kernel,
            (M::Auto, None) => Mechanism::Userspace,
        };
        if m == Mechanism::Userspace && !self.caps.userspace {
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

    fn workloads(&mut self) -> Vec<plan::Workload> {
        let sc = self.sc;
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        for w in &sc.spec.workloads {
            self.name_ok(&w.name, "workload");
            if !seen.insert(w.name.value.clone()) {
                self.err(
                    w.name.pos,
                    format!("duplicate workload name `{}`", w.name.value),
                );
            }
            let nodes = self
                .select(&w.on, &format!("in `on` of workload `{}`", w.name.value))
                .unwrap_or_default();
            let app = match (&w.command, &w.app) {
                (Some(_), None) => None,
                (None, Some(a)) => match apps::find(a) {
                    Some(app) => Some(app),
                    None => {
                        self.unknown(a.pos, "app", a, "", apps::APPS.iter().map(|a| a.name));
                        None
                    }
                },
                _ => {
                    self.err(
                        w.name.pos,
                        format!(
                            "workload `{}` needs exactly one of `command` or `app`",
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
            let mut arm64_argv = None;
            let argv = match (&w.command, &w.app, app) {
                (Some(c), _, _) => {
                    if !w.args.is_empty() {
                        self.err(
                            c.pos,
                            "`args` goes with `app`; put a command's arguments in `command`",
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
                    argv
                }
                (None, Some(a), Some(app)) => {
                    let arm64_nodes = nodes
                        .iter()
                        .any(|&n| self.nodes[n].profile.arch == crate::profile::Arch::Arm64);
                    if sc.spec.emulate_arch && arm64_nodes {
                        match apps::arm64_command(app.name) {
                            Ok(mut v) => {
                                v.extend(w.args.iter().cloned());
                                arm64_argv = Some(v);
                            }
                            Err(e) => {
                                self.err(a.pos, format!("app `{}`: {e}", app.name));
                            }
                        }
                    }
                    let native_needed = !sc.spec.emulate_arch
                        || nodes
                            .iter()
                            .any(|&n| self.nodes[n].profile.arch != crate::profile::Arch::Arm64);
                    match apps::native_binary(app.name) {
                        Ok(p) => std::iter::once(p.display().to_string())
                            .chain(w.args.iter().cloned())
                            .collect(),
                        Err(e) if native_needed => {
                            self.err(a.pos, format!("app `{}`: {e}", app.name));
                            vec![]
                        }
                        Err(_) => vec![app.name.to_string()],
                    }
                }
                _ => vec![],
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
                app: app.map(|a| a.name.to_string()),
                argv,
                arm64_argv,
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
            });
        }
        out
    }

    /// Impairments the target cannot do on this kernel are errors, pointed at where they are
    /// written.
    fn capabilities(&mut self, p: &Plan) {
        if self.caps.netem || p.mechanism == Mechanism::Userspace {
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
        for (pos, what) in spots {
            let hint = self.caps.netem_hint.clone();
            self.err(
                pos,
                format!(
                    "link {what} needs netem, which this kernel lacks, and `impairment: kernel` keeps the `{}` target from using the userspace emulator",
                    self.caps.target
                ),
            )
            .hint = Some(hint);
        }
    }

    /// Flattens the timeline into absolute actions, simulating its effect in time order to
    /// compute reverts and to catch entries that conflict. Each kind of entry has its own
    /// `on_*` method.
    fn timeline(&mut self, p: &Plan) -> Vec<Action> {
        let sc = self.sc;
        let mut sim = Sim::new(p);
        // Entries are applied in time order; equal times keep file order.
        let mut order: Vec<usize> = (0..sc.spec.timeline.len()).collect();
        order.sort_by_key(|&i| sc.spec.timeline[i].at.0);
        for &ei in &order {
            let e: &EventSpec = &sc.spec.timeline[ei];
            let at = e.at.0;
            // Reverts due at or before this instant happen first.
            sim.flush(at);
            if at > p.duration {
                self.err(
                    e.at.pos,
                    format!(
                        "timeline entry at {} is after the end of the scenario ({})",
                        Dur(at),
                        Dur(p.duration)
                    ),
                );
                continue;
            }
            let until = e.for_.as_ref().map(|f| at + f.0);
            if let (Some(f), Some(u)) = (&e.for_, until) {
                if f.is_zero() {
                    self.err(f.pos, "`for` must be longer than zero");
                }
                if u > p.duration {
                    self.err(
                        f.pos,
                        format!(
                            "this entry reverts at {}, after the end of the scenario ({})",
                            Dur(u),
                            Dur(p.duration)
                        ),
                    )
                    .hint = Some("shorten `for` or lengthen `spec.duration`".into());
                }
            }
            let present: Vec<&str> = [
                (e.partition.is_some(), "partition"),
                (e.heal.is_some(), "heal"),
                (e.impair.is_some(), "impair"),
                (e.node_down.is_some(), "node-down"),
                (e.node_up.is_some(), "node-up"),
                (e.kill.is_some(), "kill"),
                (e.restart.is_some(), "restart"),
                (e.cpu.is_some(), "cpu"),
                (e.memory.is_some(), "memory"),
                (e.flap.is_some(), "flap"),
                (e.trace.is_some(), "trace"),
            ]
            .iter()
            .filter(|(b, _)| *b)
            .map(|(_, n)| *n)
            .collect();
            if present.len() != 1 {
                let msg = if present.is_empty() {
                    format!("timeline entry at {} has no action", Dur(at))
                } else {
                    format!(
                        "timeline entry at {} has {} actions ({}); give each its own entry",
                        Dur(at),
                        present.len(),
                        present.join(", ")
                    )
                };
                self.err(e.at.pos, msg).hint = Some("actions: partition, heal, impair, flap, trace, node-down, node-up, kill, restart, cpu, memory".into());
                continue;
            }
            let x = Entry { e, ei, at, until };
            if let Some(pa) = &e.partition {
                self.on_partition(&mut sim, p, x, pa);
            } else if let Some(h) = &e.heal {
                self.on_heal(&mut sim, p, x, h);
            } else if let Some(im) = &e.impair {
                self.on_impair(&mut sim, p, x, im);
            } else if let Some(nd) = &e.node_down {
                self.on_node_down(&mut sim, p, x, nd);
            } else if let Some(nu) = &e.node_up {
                self.on_node_up(&mut sim, p, x, nu);
            } else if let Some(k) = &e.kill {
                self.on_kill(&mut sim, p, x, k);
            } else if let Some(r) = &e.restart {
                self.on_restart(&mut sim, p, x, r);
            } else if let Some(c) = &e.cpu {
                self.on_cpu(&mut sim, p, x, c);
            } else if let Some(f) = &e.flap {
                self.on_flap(&mut sim, p, x, f);
            } else if let Some(tr) = &e.trace {
                self.on_trace(&mut sim, p, x, tr);
            } else if let Some(m) = &e.memory {
                self.on_memory(&mut sim, p, x, m);
            }
        }
        sim.finish()
    }

    fn no_for(&mut self, e: &EventSpec, what: &str) {
        if let Some(f) = &e.for_ {
            self.err(f.pos, format!("`for` has no meaning for `{what}`"));
        }
    }

    fn on_partition(&mut self, sim: &mut Sim, p: &Plan, x: Entry<'_>, pa: &model::PartitionAction) {
        let Entry { e, ei, at, until } = x;
        let sc = self.sc;
        let Sim {
            out,
            reverts,
            partitions,
            auto_name,
            ..
        } = sim;
        *auto_name += 1;
        let name = pa
            .name
            .as_ref()
            .map(|n| n.value.clone())
            .unwrap_or_else(|| format!("partition-{auto_name}"));
        if let Some(&prev) = partitions.get(&name) {
            self.err(
                e.at.pos,
                format!(
                    "partition `{name}` is already in effect (from the entry at {})",
                    Dur(sc.spec.timeline[prev].at.0)
                ),
            )
            .hint = Some("heal it first, or give this partition another `name`".into());
            return;
        }
        let groups: Vec<Vec<usize>> = match (&pa.between, &pa.isolate) {
            (Some(b), None) => {
                if pa.pick.is_some() {
                    self.err(b.pos, "`pick` goes with `isolate`, not `between`");
                }
                if b.len() < 2 {
                    self.err(b.pos, "`between` needs at least two groups, e.g. `[[site/factory], [site/cloud]]`");
                    return;
                }
                let mut gs = Vec::new();
                for g in b.iter() {
                    match self.select(g, "in partition") {
                        Some(v) => gs.push(v),
                        None => continue,
                    }
                }
                if gs.len() != b.len() {
                    return;
                }
                gs
            }
            (None, Some(iso)) => {
                let Some(mut sel) = self.select(iso, "in partition") else {
                    return;
                };
                if let Some(k) = &pa.pick {
                    if k.value == 0 || k.value as usize > sel.len() {
                        self.err(
                            k.pos,
                            format!(
                                "cannot pick {} of the {} selected nodes",
                                k.value,
                                sel.len()
                            ),
                        );
                        return;
                    }
                    let mut rng = rng_for(p.seed, &format!("timeline/{ei}/pick"));
                    // Partial Fisher-Yates: a seeded, stable choice.
                    for i in 0..k.value as usize {
                        let j = rng.random_range(i..sel.len());
                        sel.swap(i, j);
                    }
                    sel.truncate(k.value as usize);
                    sel.sort_unstable();
                }
                let rest: Vec<usize> = (0..p.nodes.len()).filter(|i| !sel.contains(i)).collect();
                if rest.is_empty() {
                    self.err(
                        iso.pos,
                        "isolating every node leaves nothing to be isolated from",
                    );
                    return;
                }
                vec![sel, rest]
            }
            _ => {
                self.err(
                    e.at.pos,
                    "a partition needs exactly one of `between` or `isolate`",
                );
                return;
            }
        };
        // Overlapping groups would block a node from itself.
        let mut seen = BTreeMap::new();
        let mut clash = None;
        for (gi, g) in groups.iter().enumerate() {
            for n in g {
                if let Some(prev) = seen.insert(*n, gi)
                    && prev != gi
                {
                    clash = Some(*n);
                }
            }
        }
        if let Some(n) = clash {
            self.err(
                e.at.pos,
                format!(
                    "node `{}` is in more than one group of the partition",
                    p.nodes[n].name
                ),
            );
            return;
        }
        let mut blocks = Vec::new();
        for (i, a) in groups.iter().enumerate() {
            for (j, b) in groups.iter().enumerate() {
                if i == j || (pa.one_way && i != 0) {
                    continue;
                }
                blocks.push(Block {
                    from: a.clone(),
                    to: b.clone(),
                });
            }
        }
        let summary = format!(
            "partition `{name}`{}: {}",
            if pa.one_way { " (one-way)" } else { "" },
            groups
                .iter()
                .map(|g| self.describe(p, g))
                .collect::<Vec<_>>()
                .join(if pa.one_way { " -x-> " } else { " | " })
        );
        partitions.insert(name.clone(), ei);
        out.push(Pending {
            at,
            revert: false,
            event: ei,
            kind: ActionKind::Partition {
                name: name.clone(),
                blocks,
            },
            summary,
        });
        if let Some(u) = until {
            reverts.push((
                u,
                ei,
                RevertOp::Kind(ActionKind::Heal {
                    names: vec![name.clone()],
                }),
                format!("heal `{name}` (end of `for`)"),
            ));
        }
    }

    fn on_heal(&mut self, sim: &mut Sim, _p: &Plan, x: Entry<'_>, h: &model::HealAction) {
        let Entry { e, ei, at, .. } = x;
        let Sim {
            out,
            reverts,
            partitions,
            ..
        } = sim;
        self.no_for(e, "heal");
        let names: Vec<String> = match &h.name {
            Some(n) => {
                if !partitions.contains_key(&n.value) {
                    let active: Vec<&str> = partitions.keys().map(String::as_str).collect();
                    let hint = unknown_hint(n, "partitions in effect", &active);
                    let d = self.err(
                        n.pos,
                        format!(
                            "no partition named `{}` is in effect at {}",
                            n.value,
                            Dur(at)
                        ),
                    );
                    d.hint = hint;
                    return;
                }
                vec![n.value.clone()]
            }
            None => partitions.keys().cloned().collect(),
        };
        if names.is_empty() {
            self.err(
                e.at.pos,
                format!("heal at {}: no partition is in effect", Dur(at)),
            );
            return;
        }
        for n in &names {
            partitions.remove(n);
        }
        // A heal cancels the automatic heal of a `for` partition.
        reverts.retain(|r| !matches!(&r.2, RevertOp::Kind(ActionKind::Heal { names: ns }) if ns.iter().all(|x| names.contains(x))));
        let summary = format!(
            "heal {}",
            names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        out.push(Pending {
            at,
            revert: false,
            event: ei,
            kind: ActionKind::Heal { names },
            summary,
        });
    }

    fn on_impair(&mut self, sim: &mut Sim, p: &Plan, x: Entry<'_>, im: &model::ImpairAction) {
        let Entry { e, ei, at, until } = x;
        let Sim {
            out,
            reverts,
            link_state,
            owned,
            ..
        } = sim;
        let Some(li) = self.link_ref(p, &im.link) else {
            return;
        };
        let imp = im.impairment();
        let fields: Vec<&'static str> = imp.present().into_iter().map(|(f, _)| f).collect();
        if fields.is_empty() {
            self.err(
                im.link.pos,
                "`impair` changes nothing: give at least one impairment (delay, jitter, loss, rate, …)",
            );
            return;
        }
        let dirs: Vec<bool> = match im.direction {
            Direction::Both => vec![true, false],
            Direction::Up => vec![true],
            Direction::Down => vec![false],
        };
        if self.link_conflict(owned, li, &dirs, &fields, at, until, ei, e.at.pos) {
            return;
        }
        let before = link_state[li];
        let mut after = before;
        for &d in &dirs {
            let lp = if d { &mut after.0 } else { &mut after.1 };
            lp.set_from(&imp);
            self.check_params(lp, e.at.pos, &format!("link `{}`", im.link.value));
        }
        link_state[li] = after;
        let summary = format!("impair `{}` {}", im.link.value, describe_change(im));
        out.push(Pending {
            at,
            revert: false,
            event: ei,
            kind: ActionKind::Impair {
                link: li,
                up: after.0,
                down: after.1,
            },
            summary,
        });
        if let Some(u) = until {
            // Revert only the fields this entry set, on top of whatever holds then.
            reverts.push((
                u,
                ei,
                RevertOp::Restore {
                    link: li,
                    dirs: dirs.clone(),
                    fields: fields.clone(),
                    before,
                },
                format!("restore `{}` (end of `for`)", im.link.value),
            ));
        }
    }

    fn on_node_down(&mut self, sim: &mut Sim, p: &Plan, x: Entry<'_>, nd: &model::NodeDownAction) {
        let Entry { e, ei, at, until } = x;
        let Sim {
            out, reverts, down, ..
        } = sim;
        let Some(nodes) = self.select(&nd.nodes, "in node-down") else {
            return;
        };
        let mut bad = false;
        for n in &nodes {
            if down.contains_key(n) {
                self.err(
                    e.at.pos,
                    format!("node `{}` is already down at {}", p.nodes[*n].name, Dur(at)),
                );
                bad = true;
            }
        }
        if bad {
            return;
        }
        for n in &nodes {
            down.insert(*n, (nd.mode, until));
        }
        let summary = format!(
            "node-down ({}) {}",
            mode_name(nd.mode),
            self.describe(p, &nodes)
        );
        out.push(Pending {
            at,
            revert: false,
            event: ei,
            kind: ActionKind::NodeDown {
                nodes: nodes.clone(),
                mode: nd.mode,
            },
            summary: summary.clone(),
        });
        if let Some(u) = until {
            reverts.push((
                u,
                ei,
                RevertOp::Kind(ActionKind::NodeUp {
                    nodes: nodes.clone(),
                    mode: nd.mode,
                }),
                format!("node-up {} (end of `for`)", self.describe(p, &nodes)),
            ));
        }
    }

    fn on_node_up(&mut self, sim: &mut Sim, p: &Plan, x: Entry<'_>, nu: &model::NodesAction) {
        let Entry { e, ei, at, .. } = x;
        let Sim { out, down, .. } = sim;
        self.no_for(e, "node-up");
        let Some(nodes) = self.select(&nu.nodes, "in node-up") else {
            return;
        };
        let mut modes = BTreeSet::new();
        let mut bad = false;
        for n in &nodes {
            match down.get(n) {
                None => {
                    self.err(
                        e.at.pos,
                        format!("node `{}` is not down at {}", p.nodes[*n].name, Dur(at)),
                    );
                    bad = true;
                }
                Some((_, Some(end))) => {
                    self.err(
                        e.at.pos,
                        format!(
                            "node `{}` comes back by itself at {} (its node-down has `for`)",
                            p.nodes[*n].name,
                            Dur(*end)
                        ),
                    );
                    bad = true;
                }
                Some((m, None)) => {
                    modes.insert(mode_name(*m));
                }
            }
        }
        if bad {
            return;
        }
        if modes.len() > 1 {
            self.err(
                e.at.pos,
                "these nodes went down in different modes; bring them up in separate entries",
            );
            return;
        }
        let mode = down.get(&nodes[0]).map(|d| d.0).unwrap_or_default();
        for n in &nodes {
            down.remove(n);
        }
        let summary = format!("node-up {}", self.describe(p, &nodes));
        out.push(Pending {
            at,
            revert: false,
            event: ei,
            kind: ActionKind::NodeUp { nodes, mode },
            summary,
        });
    }

    fn on_kill(&mut self, sim: &mut Sim, p: &Plan, x: Entry<'_>, k: &model::KillAction) {
        let Entry { e, ei, at, until } = x;
        let Sim {
            out, reverts, down, ..
        } = sim;
        let Some((wi, nodes)) = self.workload_nodes(p, &k.workload, k.nodes.as_ref()) else {
            return;
        };
        let signal = match &k.signal {
            None => libc::SIGKILL,
            Some(s) => match signal_number(s) {
                Some(n) => n,
                None => {
                    self.err(s.pos, format!("unknown signal `{}`", s.value))
                        .hint =
                        Some("signals: KILL, TERM, INT, HUP, QUIT, USR1, USR2, STOP, CONT".into());
                    return;
                }
            },
        };
        self.check_not_poweroff(down, &nodes, p, e.at.pos, "kill");
        let summary = format!(
            "kill `{}` on {}",
            k.workload.value,
            self.describe(p, &nodes)
        );
        out.push(Pending {
            at,
            revert: false,
            event: ei,
            kind: ActionKind::Kill {
                workload: wi,
                nodes: nodes.clone(),
                signal,
            },
            summary,
        });
        if let Some(u) = until {
            reverts.push((
                u,
                ei,
                RevertOp::Kind(ActionKind::Restart {
                    workload: wi,
                    nodes: nodes.clone(),
                }),
                format!("restart `{}` (end of `for`)", k.workload.value),
            ));
        }
    }

    fn on_restart(&mut self, sim: &mut Sim, p: &Plan, x: Entry<'_>, r: &model::RestartAction) {
        let Entry { e, ei, at, .. } = x;
        let Sim { out, down, .. } = sim;
        self.no_for(e, "restart");
        let Some((wi, nodes)) = self.workload_nodes(p, &r.workload, r.nodes.as_ref()) else {
            return;
        };
        self.check_not_poweroff(down, &nodes, p, e.at.pos, "restart");
        let summary = format!(
            "restart `{}` on {}",
            r.workload.value,
            self.describe(p, &nodes)
        );
        out.push(Pending {
            at,
            revert: false,
            event: ei,
            kind: ActionKind::Restart {
                workload: wi,
                nodes,
            },
            summary,
        });
    }

    fn on_cpu(&mut self, sim: &mut Sim, p: &Plan, x: Entry<'_>, c: &model::CpuAction) {
        let Entry { e, ei, at, until } = x;
        let Sim {
            out,
            reverts,
            cpu_owned,
            ..
        } = sim;
        let Some(nodes) = self.select(&c.nodes, "in cpu") else {
            return;
        };
        let cores = match (&c.cores, &c.percent) {
            (Some(x), None) => {
                if !(x.value > 0.0 && x.value.is_finite()) {
                    self.err(x.pos, "cores must be greater than zero");
                    return;
                }
                for n in &nodes {
                    let have = f64::from(p.nodes[*n].profile.cpu.cores);
                    if x.value > have {
                        self.err(
                            x.pos,
                            format!(
                                "node `{}` has {} cores (profile `{}`); cannot give it {}",
                                p.nodes[*n].name, have, p.nodes[*n].profile_name, x.value
                            ),
                        );
                    }
                }
                CpuSet::Cores(x.value)
            }
            (None, Some(pc)) => {
                if pc.is_zero() {
                    self.err(pc.pos, "percent must be greater than zero");
                    return;
                }
                CpuSet::Fraction(pc.fraction())
            }
            _ => {
                self.err(
                    c.nodes.pos,
                    "`cpu` needs exactly one of `cores` or `percent`",
                );
                return;
            }
        };
        if self.owned_conflict(cpu_owned, &nodes, "cpu", at, until, ei, p, e.at.pos) {
            return;
        }
        // Express both forms in profile cores per node; percent differs per profile.
        for n in &nodes {
            let full = f64::from(p.nodes[*n].profile.cpu.cores);
            let v = match cores {
                CpuSet::Cores(c) => c,
                CpuSet::Fraction(f) => full * f,
            };
            let summary = format!("cpu {} → {:.2} cores", p.nodes[*n].name, v);
            out.push(Pending {
                at,
                revert: false,
                event: ei,
                kind: ActionKind::Cpu {
                    nodes: vec![*n],
                    cores: Some(v),
                },
                summary,
            });
        }
        if let Some(u) = until {
            reverts.push((
                u,
                ei,
                RevertOp::Kind(ActionKind::Cpu {
                    nodes: nodes.clone(),
                    cores: None,
                }),
                format!("restore cpu of {} (end of `for`)", self.describe(p, &nodes)),
            ));
        }
    }

    fn on_flap(&mut self, sim: &mut Sim, p: &Plan, x: Entry<'_>, f: &model::FlapAction) {
        let Entry { e, ei, at, until } = x;
        let Sim { reverts, owned, .. } = sim;
        let Some(li) = self.link_ref(p, &f.link) else {
            return;
        };
        let Some(u) = until else {
            self.err(e.at.pos, "`flap` needs `for`: how long the link flaps")
                .hint = Some("e.g. `{at: 45s, for: 10s, flap: {link: factory-uplink, up: exp(5s), down: exp(1s)}}`".into());
            return;
        };
        if self.link_conflict(
            owned,
            li,
            &[true, false],
            &["cut"],
            at,
            Some(u),
            ei,
            e.at.pos,
        ) {
            return;
        }
        // Draw the whole schedule now: it is part of the plan, seeded and replayable.
        let mut rng = rng_for(p.seed, &format!("timeline/{ei}/flap"));
        let mut t = at;
        let mut cut = false;
        let name = &f.link.value;
        loop {
            let phase = if cut {
                f.down.sample(&mut rng)
            } else {
                f.up.sample(&mut rng)
            };
            t += phase;
            if t >= u {
                break;
            }
            cut = !cut;
            let v = LinkParams {
                cut,
                ..LinkParams::default()
            };
            reverts.push((
                t,
                ei,
                RevertOp::Set {
                    link: li,
                    dirs: vec![true, false],
                    fields: vec!["cut"],
                    values: (v, v),
                },
                format!("flap `{name}` {}", if cut { "down" } else { "up" }),
            ));
        }
        reverts.push((
            u,
            ei,
            RevertOp::Set {
                link: li,
                dirs: vec![true, false],
                fields: vec!["cut"],
                values: Default::default(),
            },
            format!("flap `{name}` ends: up (end of `for`)"),
        ));
    }

    fn on_trace(&mut self, sim: &mut Sim, p: &Plan, x: Entry<'_>, tr: &model::TraceAction) {
        let Entry { e, ei, at, until } = x;
        let Sim {
            reverts,
            link_state,
            owned,
            ..
        } = sim;
        let Some(li) = self.link_ref(p, &tr.link) else {
            return;
        };
        let Some(rows) = self.read_trace(tr) else {
            return;
        };
        let dirs = match tr.direction {
            Direction::Both => vec![true, false],
            Direction::Up => vec![true],
            Direction::Down => vec![false],
        };
        let mut fields: Vec<&'static str> = Vec::new();
        for r in &rows {
            for f in &r.fields {
                if !fields.contains(f) {
                    fields.push(f);
                }
            }
        }
        let last = rows.last().map_or(Duration::ZERO, |r| r.t);
        let end = until.unwrap_or(at + last);
        if self.link_conflict(owned, li, &dirs, &fields, at, Some(end), ei, e.at.pos) {
            return;
        }
        let period = last
            + rows
                .get(1)
                .map_or(Duration::from_secs(1), |r| r.t - rows[0].t);
        let mut offset = Duration::ZERO;
        'rounds: loop {
            for (k, r) in rows.iter().enumerate() {
                let t = at + offset + r.t;
                if t > end || (until.is_some() && t == end) {
                    break 'rounds;
                }
                reverts.push((
                    t,
                    ei,
                    RevertOp::Set {
                        link: li,
                        dirs: dirs.clone(),
                        fields: r.fields.clone(),
                        values: (r.params, r.params),
                    },
                    format!("trace `{}` row {}", tr.link.value, k + 1),
                ));
            }
            if !tr.repeat || until.is_none() {
                break;
            }
            offset += period;
        }
        if let Some(u) = until {
            let before = link_state[li];
            reverts.push((
                u,
                ei,
                RevertOp::Restore {
                    link: li,
                    dirs,
                    fields,
                    before,
                },
                format!("restore `{}` (end of trace)", tr.link.value),
            ));
        }
    }

    fn on_memory(&mut self, sim: &mut Sim, p: &Plan, x: Entry<'_>, m: &model::MemoryAction) {
        let Entry { e, ei, at, until } = x;
        let Sim {
            out,
            reverts,
            cpu_owned,
            ..
        } = sim;
        let Some(nodes) = self.select(&m.nodes, "in memory") else {
            return;
        };
        if m.limit.0 < 4 << 20 {
            self.err(
                m.limit.pos,
                format!("memory limit {} is below 4Mi", m.limit.value),
            );
            return;
        }
        if self.owned_conflict(cpu_owned, &nodes, "memory", at, until, ei, p, e.at.pos) {
            return;
        }
        let summary = format!("memory {} → {}", self.describe(p, &nodes), m.limit.value);
        out.push(Pending {
            at,
            revert: false,
            event: ei,
            kind: ActionKind::Memory {
                nodes: nodes.clone(),
                limit: Some(m.limit.0),
            },
            summary,
        });
        if let Some(u) = until {
            reverts.push((
                u,
                ei,
                RevertOp::Kind(ActionKind::Memory {
                    nodes: nodes.clone(),
                    limit: None,
                }),
                format!(
                    "restore memory of {} (end of `for`)",
                    self.describe(p, &nodes)
                ),
            ));
        }
    }

    fn link_ref(&mut self, p: &Plan, l: &Loc<String>) -> Option<usize> {
        if let Some(&li) = self.link_ix.get(&l.value) {
            return Some(li);
        }
        self.unknown(
            l.pos,
            "link",
            l,
            "",
            p.links.iter().map(|l| l.name.as_str()),
        );
        None
    }

    /// Claims `fields` of link `li` until `until`; an error if an earlier entry still holds
    /// one of them.
    #[allow(clippy::too_many_arguments)]
    fn link_conflict(
        &mut self,
        owned: &mut HashMap<(usize, bool, &'static str), (Duration, usize)>,
        li: usize,
        dirs: &[bool],
        fields: &[&'static str],
        at: Duration,
        until: Option<Duration>,
        ei: usize,
        pos: Pos,
    ) -> bool {
        for &d in dirs {
            for f in fields {
                if let Some((end, owner)) = owned.get(&(li, d, *f))
                    && *end > at
                {
                    let (end, owner) = (*end, *owner);
                    let name = self.links_name(li);
                    self.err(
                        pos,
                        format!(
                            "this changes the {f} of link `{name}` while the entry at {} still holds it (until {})",
                            Dur(self.sc.spec.timeline[owner].at.0),
                            Dur(end)
                        ),
                    )
                    .hint = Some("the earlier entry's revert would undo this change; move one of them".into());
                    return true;
                }
            }
        }
        if let Some(u) = until {
            for &d in dirs {
                for f in fields {
                    owned.insert((li, d, *f), (u, ei));
                }
            }
        }
        false
    }

    fn links_name(&self, li: usize) -> String {
        self.link_ix
            .iter()
            .find(|(_, v)| **v == li)
            .map(|(k, _)| k.clone())
            .unwrap_or_default()
    }

    /// Reads a trace CSV (relative to the scenario file). Errors point at `file:` and name
    /// the CSV line.
    fn read_trace(&mut self, tr: &model::TraceAction) -> Option<Vec<TraceRow>> {
        let path = self
            .file
            .parent()
            .unwrap_or(Path::new("."))
            .join(&tr.file.value);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                self.err(
                    tr.file.pos,
                    format!("cannot read trace {}: {e}", path.display()),
                );
                return None;
            }
        };
        match parse_trace(&text) {
            Ok(rows) if rows.is_empty() => {
                self.err(tr.file.pos, format!("trace {} has no rows", tr.file.value));
                None
            }
            Ok(rows) => {
                if !self.caps.netem
                    && self.mechanism == Mechanism::Kernel
                    && rows.iter().any(|r| r.params.needs_netem())
                {
                    let hint = self.caps.netem_hint.clone();
                    self.err(tr.file.pos, format!("trace {} sets delays, which need netem (this kernel lacks it) while `impairment: kernel` keeps the `{}` target from using the userspace emulator", tr.file.value, self.caps.target))
                        .hint = Some(hint);
                }
                Some(rows)
            }
            Err(e) => {
                self.err(tr.file.pos, format!("trace {}: {e}", tr.file.value))
                    .hint = Some("columns: time, then any of rate, delay, jitter, loss (e.g. `0s,20mbit,40ms,5ms,0.5%`)".into());
                None
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn owned_conflict(
        &mut self,
        owned: &mut HashMap<(usize, &'static str), (Duration, usize)>,
        nodes: &[usize],
        what: &'static str,
        at: Duration,
        until: Option<Duration>,
        ei: usize,
        p: &Plan,
        pos: Pos,
    ) -> bool {
        for n in nodes {
            if let Some((end, owner)) = owned.get(&(*n, what))
                && *end > at
            {
                self.err(pos, format!(
                    "this changes the {what} of node `{}` while the entry at {} still holds it (until {})",
                    p.nodes[*n].name, Dur(self.sc.spec.timeline[*owner].at.0), Dur(*end)))
                    .hint = Some("the earlier entry's revert would undo this change; move one of them".into());
                return true;
            }
        }
        if let Some(u) = until {
            for n in nodes {
                owned.insert((*n, what), (u, ei));
            }
        }
        false
    }

    fn check_not_poweroff(
        &mut self,
        down: &HashMap<usize, (DownMode, Option<Duration>)>,
        nodes: &[usize],
        p: &Plan,
        pos: Pos,
        what: &str,
    ) {
        for n in nodes {
            if let Some((DownMode::Poweroff, _)) = down.get(n) {
                self.err(
                    pos,
                    format!(
                        "`{what}` on node `{}`, which is powered off at this time",
                        p.nodes[*n].name
                    ),
                );
            }
        }
    }

    fn workload_nodes(
        &mut self,
        p: &Plan,
        w: &Loc<String>,
        nodes: Option<&Loc<Vec<Loc<String>>>>,
    ) -> Option<(usize, Vec<usize>)> {
        let Some(wi) = p.workload_index(w) else {
            self.unknown(
                w.pos,
                "workload",
                w,
                "",
                p.workloads.iter().map(|w| w.name.as_str()),
            );
            return None;
        };
        let all = p.workloads[wi].nodes.clone();
        match nodes {
            None => Some((wi, all)),
            Some(sel) => {
                let chosen = self.select(sel, &format!("for workload `{}`", w.value))?;
                let outside: Vec<&str> = chosen
                    .iter()
                    .filter(|n| !all.contains(n))
                    .map(|n| p.nodes[*n].name.as_str())
                    .collect();
                if !outside.is_empty() {
                    self.err(
                        sel.pos,
                        format!(
                            "workload `{}` does not run on {}",
                            w.value,
                            outside.join(", ")
                        ),
                    );
                    return None;
                }
                Some((wi, chosen))
            }
        }
    }

    /// A short description of a node set: `site/factory`, `gw-1, gw-2` or `12 nodes`.
    fn describe(&self, p: &Plan, nodes: &[usize]) -> String {
        for (si, s) in p.sites.iter().enumerate() {
            let in_site: Vec<usize> = (0..p.nodes.len())
                .filter(|&i| p.nodes[i].site == si)
                .collect();
            if !in_site.is_empty() && in_site == nodes {
                return format!("site/{}", s.name);
            }
        }
        if nodes.len() <= 4 {
            nodes
                .iter()
                .map(|&n| p.nodes[n].name.as_str())
                .collect::<Vec<_>>()
                .join(",")
        } else {
            format!("{} nodes", nodes.len())
        }
    }

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

    fn probes(&mut self, p: &Plan) -> Vec<plan::Probe> {
        let sc = self.sc;
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        for pr in &sc.spec.probes {
            self.name_ok(&pr.name, "probe");
            if !seen.insert(pr.name.value.clone()) {
                self.err(
                    pr.name.pos,
                    format!("duplicate probe name `{}`", pr.name.value),
                );
            }
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

    fn assertions(&mut self, p: &Plan) -> Vec<plan::Assertion> {
        let sc = self.sc;
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        for a in &sc.spec.assertions {
            if !seen.insert(a.name.value.clone()) {
                self.err(
                    a.name.pos,
                    format!("duplicate assertion name `{}`", a.name.value),
                );
            }
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
                        None => super::expect::Window::ALL,
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
                    plan::Subject::Probe { probe: pi, window }
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
            match parse_expectation(&a.expect, metric) {
                Ok(expect) => out.push(plan::Assertion {
                    name: a.name.value.clone(),
                    subject,
                    expect,
                }),
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

/// The timeline entry being processed: the entry, its index, when it applies and, with
/// `for`, when it reverts.
#[derive(Clone, Copy)]
struct Entry<'a> {
    e: &'a EventSpec,
    ei: usize,
    at: Duration,
    until: Option<Duration>,
}

/// One action of the timeline being built.
struct Pending {
    at: Duration,
    revert: bool,
    event: usize,
    kind: ActionKind,
    summary: String,
}

/// The timeline's effect, simulated at plan time: what holds at the instant being processed,
/// and the changes scheduled for later (reverts of `for` entries, flap and trace steps).
struct Sim {
    out: Vec<Pending>,
    /// Every link's parameters (up, down).
    link_state: Vec<(LinkParams, LinkParams)>,
    /// (link, direction up?, field) → end of the `for` window that owns it, and its entry.
    owned: HashMap<(usize, bool, &'static str), (Duration, usize)>,
    /// Partitions in effect → the entry that made each.
    partitions: BTreeMap<String, usize>,
    /// Nodes that are down: how, and until when if automatically.
    down: HashMap<usize, (DownMode, Option<Duration>)>,
    /// (node, "cpu" | "memory") → end of the `for` window that owns it, and its entry.
    cpu_owned: HashMap<(usize, &'static str), (Duration, usize)>,
    /// Changes scheduled for later: (time, entry, change, summary).
    reverts: Vec<(Duration, usize, RevertOp, String)>,
    /// Counter for default partition names.
    auto_name: usize,
}

impl Sim {
    fn new(p: &Plan) -> Self {
        Sim {
            out: Vec::new(),
            link_state: p.baseline_links(),
            owned: HashMap::new(),
            partitions: BTreeMap::new(),
            down: HashMap::new(),
            cpu_owned: HashMap::new(),
            reverts: Vec::new(),
            auto_name: 0,
        }
    }

    /// Applies every scheduled change due at or before `until`, in time order.
    fn flush(&mut self, until: Duration) {
        self.reverts.sort_by_key(|r| r.0);
        while let Some(r) = self.reverts.first() {
            if r.0 > until {
                break;
            }
            let (at, event, op, summary) = self.reverts.remove(0);
            let is_revert = !matches!(op, RevertOp::Set { .. });
            let kind = match op {
                RevertOp::Kind(k) => k,
                RevertOp::Set {
                    link,
                    dirs,
                    fields,
                    values: before,
                }
                | RevertOp::Restore {
                    link,
                    dirs,
                    fields,
                    before,
                } => {
                    // Set only the listed fields; later changes to other fields stay.
                    let mut now = self.link_state[link];
                    for up in dirs {
                        let (cur, old) = if up {
                            (&mut now.0, before.0)
                        } else {
                            (&mut now.1, before.1)
                        };
                        cur.copy_fields(&old, &fields);
                    }
                    ActionKind::Impair {
                        link,
                        up: now.0,
                        down: now.1,
                    }
                }
            };
            match &kind {
                ActionKind::Impair { link, up, down: dn } => self.link_state[*link] = (*up, *dn),
                ActionKind::Heal { names } => {
                    for n in names {
                        self.partitions.remove(n);
                    }
                }
                ActionKind::NodeUp { nodes, .. } => {
                    for n in nodes {
                        self.down.remove(n);
                    }
                }
                _ => {}
            }
            self.out.push(Pending {
                at,
                revert: is_revert,
                event,
                kind,
                summary,
            });
        }
    }

    /// Everything scheduled, in order: by time; at equal times reverts first (they end what
    /// was before), then entries in file order.
    fn finish(mut self) -> Vec<Action> {
        self.flush(Duration::MAX);
        self.out
            .sort_by(|a, b| a.at.cmp(&b.at).then(b.revert.cmp(&a.revert)));
        self.out
            .into_iter()
            .enumerate()
            .map(|(seq, x)| Action {
                seq,
                at: x.at,
                event: x.event,
                revert: x.revert,
                summary: x.summary,
                kind: x.kind,
            })
            .collect()
    }
}

/// What the end of a `for:` window does, or a change an entry schedules for later (the steps
/// of a `flap` or a `trace`), applied in time order on the state that holds then.
enum RevertOp {
    Kind(ActionKind),
    /// Set the listed fields of a link's directions to the values given (not a revert).
    Set {
        link: usize,
        dirs: Vec<bool>,
        fields: Vec<&'static str>,
        values: (LinkParams, LinkParams),
    },
    /// Put back the listed fields of a link's directions as they were before the entry.
    Restore {
        link: usize,
        dirs: Vec<bool>,
        fields: Vec<&'static str>,
        before: (LinkParams, LinkParams),
    },
}

#[derive(Clone, Copy)]
enum CpuSet {
    Cores(f64),
    Fraction(f64),
}

fn mode_name(m: DownMode) -> &'static str {
    match m {
        DownMode::Poweroff => "poweroff",
        DownMode::Freeze => "freeze",
        DownMode::Isolate => "isolate",
    }
}

fn describe_change(im: &model::ImpairAction) -> String {
    let v = serde_json::to_value(im.impairment()).unwrap_or_default();
    let parts: Vec<String> = v
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, x)| {
                    format!(
                        "{k}={}",
                        x.as_str().map_or_else(|| x.to_string(), str::to_string)
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let dir = match im.direction {
        Direction::Both => "",
        Direction::Up => " (up)",
        Direction::Down => " (down)",
    };
    format!("{}{dir}", parts.join(" "))
}

/// Signal number for a name such as `KILL`, `SIGTERM` or `9`.
pub fn signal_number(s: &str) -> Option<i32> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let name = s.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    Some(match name {
        "KILL" => libc::SIGKILL,
        "TERM" => libc::SIGTERM,
        "INT" => libc::SIGINT,
        "HUP" => libc::SIGHUP,
        "QUIT" => libc::SIGQUIT,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "STOP" => libc::SIGSTOP,
        "CONT" => libc::SIGCONT,
        "ABRT" => libc::SIGABRT,
        _ => return None,
    })
}

/// One row of a link trace.
#[derive(Debug, Clone)]
pub struct TraceRow {
    /// Offset from the start of the trace.
    pub t: Duration,
    /// The fields this row sets (empty cells set nothing).
    pub fields: Vec<&'static str>,
    pub params: LinkParams,
}

/// Parses a link trace: a CSV with a header naming `time` and any of `rate`, `delay`,
/// `jitter`, `loss`; values carry units (`time` may also be bare seconds). Times must start at
/// 0 and increase.
pub fn parse_trace(text: &str) -> Result<Vec<TraceRow>, String> {
    let mut rd = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_reader(text.as_bytes());
    let headers: Vec<String> = rd
        .headers()
        .map_err(|e| e.to_string())?
        .iter()
        .map(str::to_ascii_lowercase)
        .collect();
    let col = |n: &str| headers.iter().position(|h| h == n);
    let time = col("time").ok_or("the header has no `time` column")?;
    for h in &headers {
        if !["time", "rate", "delay", "jitter", "loss"].contains(&h.as_str()) {
            return Err(format!("unknown column `{h}`"));
        }
    }
    let mut rows: Vec<TraceRow> = Vec::new();
    for rec in rd.records() {
        let rec = rec.map_err(|e| e.to_string())?;
        let line = rec.position().map_or(0, |p| p.line());
        let cell = |i: Option<usize>| i.and_then(|i| rec.get(i)).filter(|c| !c.is_empty());
        let at = |e: String| format!("line {line}: {e}");
        let tcell = cell(Some(time)).ok_or_else(|| at("empty time".into()))?;
        let t = match tcell.parse::<f64>() {
            Ok(secs) if secs >= 0.0 && secs.is_finite() => Duration::from_secs_f64(secs),
            _ => tcell.parse::<Dur>().map_err(|e| at(e.0))?.0,
        };
        if rows.is_empty() && !t.is_zero() {
            return Err(at("the first row must be at time 0".into()));
        }
        if rows.last().is_some_and(|r| r.t >= t) {
            return Err(at("times must increase".into()));
        }
        let mut p = LinkParams::default();
        let mut fields = Vec::new();
        if let Some(c) = cell(col("rate")) {
            p.rate = Some(c.parse::<crate::units::Rate>().map_err(|e| at(e.0))?.0);
            fields.push("rate");
        }
        if let Some(c) = cell(col("delay")) {
            p.delay = Some(c.parse::<Dur>().map_err(|e| at(e.0))?.0);
            fields.push("delay");
        }
        if let Some(c) = cell(col("jitter")) {
            p.jitter = Some(c.parse::<Dur>().map_err(|e| at(e.0))?.0);
            fields.push("jitter");
        }
        if let Some(c) = cell(col("loss")) {
            p.loss = c
                .parse::<crate::units::Percent>()
                .map_err(|e| at(e.0))?
                .fraction();
            fields.push("loss");
        }
        if p.jitter.unwrap_or_default() > p.delay.unwrap_or_default()
            && p.jitter.is_some()
            && p.delay.is_some()
        {
            return Err(at("jitter is larger than the delay".into()));
        }
        rows.push(TraceRow {
            t,
            fields,
            params: p,
        });
    }
    Ok(rows)
}
