//! The timeline: entries flattened into absolute actions by simulating them in time order,
//! which computes each `for` revert and finds entries that conflict.

use super::*;

impl Validator<'_> {
    /// Flattens the timeline into absolute actions, simulating its effect in time order to
    /// compute reverts and to catch entries that conflict. Each kind of entry has its own
    /// `on_*` method.
    pub(super) fn timeline(&mut self, p: &Plan) -> Vec<Action> {
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
        if self.link_conflict(owned, li, &dirs, &fields, x.holding(until)) {
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
        let Entry { ei, at, until, .. } = x;
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
        if self.owned_conflict(cpu_owned, &nodes, "cpu", x.holding(until), p) {
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
        if self.link_conflict(owned, li, &[true, false], &["cut"], x.holding(Some(u))) {
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
        let Entry { ei, at, until, .. } = x;
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
        if self.link_conflict(owned, li, &dirs, &fields, x.holding(Some(end))) {
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
        let Entry { ei, at, until, .. } = x;
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
        if self.owned_conflict(cpu_owned, &nodes, "memory", x.holding(until), p) {
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
    fn link_conflict(
        &mut self,
        owned: &mut HashMap<(usize, bool, &'static str), (Duration, usize)>,
        li: usize,
        dirs: &[bool],
        fields: &[&'static str],
        h: Hold,
    ) -> bool {
        let Hold { at, until, ei, pos } = h;
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
                if !self.caps.netem()
                    && self.mechanism == Mechanism::Kernel
                    && rows.iter().any(|r| r.params.needs_netem())
                {
                    let hint = self.caps.netem_hint.clone();
                    let why = if self.caps.userspace() {
                        format!(
                            "`impairment: kernel` keeps the `{}` target from using the userspace emulator",
                            self.caps.target
                        )
                    } else {
                        format!(
                            "the `{}` target cannot run the userspace emulator",
                            self.caps.target
                        )
                    };
                    self.err(tr.file.pos, format!("trace {} sets delays, which need netem (this kernel lacks it) while {why}", tr.file.value))
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

    fn owned_conflict(
        &mut self,
        owned: &mut HashMap<(usize, &'static str), (Duration, usize)>,
        nodes: &[usize],
        what: &'static str,
        h: Hold,
        p: &Plan,
    ) -> bool {
        let Hold { at, until, ei, pos } = h;
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

impl Entry<'_> {
    /// What this entry holds from its instant until `until` (its revert, or the end of a
    /// flap or trace), for the conflict checks.
    fn holding(&self, until: Option<Duration>) -> Hold {
        Hold {
            at: self.at,
            until,
            ei: self.ei,
            pos: self.e.at.pos,
        }
    }
}

/// A field held by a timeline entry: from `at` until `until`, by entry `ei` written at `pos`.
#[derive(Clone, Copy)]
struct Hold {
    at: Duration,
    until: Option<Duration>,
    ei: usize,
    pos: Pos,
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
        // Bare seconds get the same bound as a duration with a unit (`Dur` refuses over 1e9 s).
        let t = match tcell.parse::<f64>() {
            Ok(secs) if (0.0..=1e9).contains(&secs) => Duration::from_secs_f64(secs),
            Ok(_) => return Err(at(format!("time `{tcell}` is out of range (0 to 1e9 s)"))),
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
