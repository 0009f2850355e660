//! Inventories of boards: Ansible's YAML inventory format, read as Ansible reads it.
//!
//! A user who already manages boards with Ansible points edgesim at the same file:
//!
//! ```yaml
//! all:
//!   vars: {ansible_user: edge}
//!   children:
//!     pis:
//!       vars: {edgesim_profile: raspberry-pi-5-8gb}
//!       hosts:
//!         pi-[1:2]: {}                 # pi-1, pi-2 (Ansible's host ranges)
//!     jetsons:
//!       vars: {edgesim_profile: jetson-orin-nx-16gb}
//!       hosts:
//!         orin-1: {ansible_host: 192.168.1.40, ansible_port: 2222}
//! ```
//!
//! What is read, with Ansible's meaning: groups (`all`, top-level groups, `children` to any
//! depth, `ungrouped`), `hosts` (with `[01:10]`, `[1:10:2]` and `[a:f]` ranges), `vars` on groups
//! and hosts, and the connection variables `ansible_host`, `ansible_user`, `ansible_port`,
//! `ansible_ssh_private_key_file`, `ansible_host_key_checking`. Variables merge as Ansible merges
//! them (its default `hash_behaviour = replace`): `all` first, then groups by depth (a child
//! after its parent) and, at the same depth, by `ansible_group_priority` and then by name;
//! host variables last. A test compares the result with `ansible-inventory -i FILE --list`.
//!
//! edgesim's own variables: `edgesim_profile` (the hardware profile the board is, required for
//! a host a scenario uses) and `edgesim_known_hosts_file` (a known-hosts file for this board
//! instead of the user's). Host keys are checked strictly: an unknown or changed key is
//! refused unless the inventory sets `ansible_host_key_checking: false` for that host.
//!
//! Scenario nodes bind to hosts by name (a node named like an inventory host is that host),
//! then by profile (the first unused host with the node's profile, in inventory order); every
//! node that cannot be bound is reported at once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde_json::Value;

/// Why an inventory could not be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InventoryError {
    #[error("reading inventory {path}: {detail}", path = path.display())]
    Read { path: PathBuf, detail: String },
    #[error("{path}:{line}:{column}: {message}", path = path.display())]
    Parse {
        path: PathBuf,
        line: u64,
        column: u64,
        message: String,
    },
    #[error("inventory {path}:\n  {}", problems.join("\n  "), path = path.display())]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

/// One board of the inventory, with its variables merged.
#[derive(Debug, Clone, PartialEq)]
pub struct InventoryHost {
    pub name: String,
    /// Where to connect: `ansible_host`, else the host's name.
    pub address: String,
    pub user: Option<String>,
    pub port: Option<u16>,
    pub key_file: Option<PathBuf>,
    /// `edgesim_profile`.
    pub profile: Option<String>,
    /// `ansible_host_key_checking` (default true: unknown and changed keys are refused).
    pub host_key_checking: bool,
    /// `edgesim_known_hosts_file`.
    pub known_hosts_file: Option<PathBuf>,
    /// The groups the host is in, directly or through children, `all` first.
    pub groups: Vec<String>,
    /// Every variable, merged as Ansible merges them.
    pub vars: IndexMap<String, Value>,
}

/// A parsed inventory.
#[derive(Debug, Clone, PartialEq)]
pub struct Inventory {
    pub path: PathBuf,
    /// Hosts in the order Ansible lists them (first appearance).
    pub hosts: IndexMap<String, InventoryHost>,
}

/// A scenario node bound to an inventory host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub node: String,
    pub host: String,
    /// `name` or `profile`.
    pub by: &'static str,
}

#[derive(Debug, Default)]
struct Group {
    vars: IndexMap<String, Value>,
    hosts: Vec<String>,
    children: Vec<String>,
}

impl Inventory {
    /// Reads and checks an inventory file.
    pub fn load(path: &Path) -> Result<Inventory, InventoryError> {
        let text = std::fs::read_to_string(path).map_err(|e| InventoryError::Read {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        Inventory::parse(path, &text)
    }

    /// Parses an inventory held in `text` (`path` names it in messages).
    pub fn parse(path: &Path, text: &str) -> Result<Inventory, InventoryError> {
        if crate::scenario::validate::is_blank_yaml(text) {
            return Err(InventoryError::Parse {
                path: path.to_path_buf(),
                line: 1,
                column: 1,
                message:
                    "the file is empty: an inventory holds groups such as `all:` with `hosts:`"
                        .into(),
            });
        }
        let doc: Value = serde_saphyr::from_str(text).map_err(|e| {
            let (line, column, message) =
                crate::scenario::validate::yaml_place(&e, &path.display().to_string(), "inventory");
            InventoryError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                message,
            }
        })?;
        let mut problems = Vec::new();
        let mut groups: IndexMap<String, Group> = IndexMap::new();
        let mut host_vars: IndexMap<String, IndexMap<String, Value>> = IndexMap::new();
        groups.insert("all".into(), Group::default());
        match &doc {
            Value::Object(top) => {
                for (name, body) in top {
                    read_group(name, body, &mut groups, &mut host_vars, &mut problems);
                    if name != "all" {
                        link(&mut groups, "all", name);
                    }
                }
            }
            _ => problems.push(
                "the top level must be a mapping of groups (e.g. `all:` with `hosts:` and `children:`)"
                    .into(),
            ),
        }
        // Hosts in no group but `all` are in `ungrouped`, as Ansible places them.
        let in_groups: BTreeSet<&String> = groups
            .iter()
            .filter(|(n, _)| n.as_str() != "all" && n.as_str() != "ungrouped")
            .flat_map(|(_, g)| g.hosts.iter())
            .collect();
        let loose: Vec<String> = host_vars
            .keys()
            .filter(|h| !in_groups.contains(h))
            .cloned()
            .collect();
        if !loose.is_empty() {
            let g = groups.entry("ungrouped".into()).or_default();
            for h in loose {
                if !g.hosts.contains(&h) {
                    g.hosts.push(h);
                }
            }
            link(&mut groups, "all", "ungrouped");
        }
        let depth = depths(&groups, &mut problems);
        let mut hosts = IndexMap::new();
        for (name, own) in &host_vars {
            let mut member: Vec<&String> = groups
                .keys()
                .filter(|g| contains(&groups, g, name, &mut BTreeSet::new()))
                .collect();
            member.sort_by_key(|g| {
                let prio = groups[*g]
                    .vars
                    .get("ansible_group_priority")
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                (depth.get(*g).copied().unwrap_or(0), prio, (*g).clone())
            });
            let mut vars = IndexMap::new();
            for g in &member {
                // Ansible takes the priority out of the variables: it orders, it is not one.
                for (k, v) in groups[*g]
                    .vars
                    .iter()
                    .filter(|(k, _)| *k != "ansible_group_priority")
                {
                    vars.insert(k.clone(), v.clone());
                }
            }
            for (k, v) in own {
                vars.insert(k.clone(), v.clone());
            }
            match host_from(name, &vars, member.iter().map(|g| (*g).clone()).collect()) {
                Ok(h) => {
                    hosts.insert(name.clone(), h);
                }
                Err(mut p) => problems.append(&mut p),
            }
        }
        if problems.is_empty() && hosts.is_empty() {
            problems
                .push("no hosts: add boards under `all: {hosts: …}` or a group's `hosts:`".into());
        }
        if !problems.is_empty() {
            return Err(InventoryError::Invalid {
                path: path.to_path_buf(),
                problems,
            });
        }
        Ok(Inventory {
            path: path.to_path_buf(),
            hosts,
        })
    }

    /// Binds scenario nodes (name, profile) to hosts: by name, then by profile. Every node
    /// that cannot be bound, and every host bound by name whose profile differs, is reported.
    pub fn bind(&self, nodes: &[(String, String)]) -> Result<Vec<Binding>, InventoryError> {
        let mut used = BTreeSet::new();
        let mut out: Vec<Option<Binding>> = vec![None; nodes.len()];
        let mut problems = Vec::new();
        for (i, (node, profile)) in nodes.iter().enumerate() {
            if let Some(h) = self.hosts.get(node) {
                match &h.profile {
                    Some(p) if p != profile => problems.push(format!(
                        "node `{node}` is the inventory host of that name, whose edgesim_profile is `{p}`, but the scenario gives it `{profile}`"
                    )),
                    _ => {}
                }
                used.insert(node.clone());
                out[i] = Some(Binding {
                    node: node.clone(),
                    host: node.clone(),
                    by: "name",
                });
            }
        }
        for (i, (node, profile)) in nodes.iter().enumerate() {
            if out[i].is_some() {
                continue;
            }
            let free = self.hosts.values().find(|h| {
                !used.contains(&h.name)
                    && h.profile.as_deref() == Some(profile.as_str())
                    && !nodes.iter().any(|(n, _)| n == &h.name)
            });
            match free {
                Some(h) => {
                    used.insert(h.name.clone());
                    out[i] = Some(Binding {
                        node: node.clone(),
                        host: h.name.clone(),
                        by: "profile",
                    });
                }
                None => {
                    let with: Vec<&str> = self
                        .hosts
                        .values()
                        .filter(|h| h.profile.as_deref() == Some(profile.as_str()))
                        .map(|h| h.name.as_str())
                        .collect();
                    problems.push(if with.is_empty() {
                        format!(
                            "node `{node}` ({profile}): no inventory host is named `{node}` and none has edgesim_profile `{profile}`"
                        )
                    } else {
                        format!(
                            "node `{node}` ({profile}): every host with that profile is taken ({})",
                            with.join(", ")
                        )
                    });
                }
            }
        }
        if !problems.is_empty() {
            return Err(InventoryError::Invalid {
                path: self.path.clone(),
                problems,
            });
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// The merged variables of every host, as `ansible-inventory --list` shows them under
    /// `_meta.hostvars`.
    pub fn hostvars(&self) -> BTreeMap<String, IndexMap<String, Value>> {
        self.hosts
            .iter()
            .map(|(n, h)| (n.clone(), h.vars.clone()))
            .collect()
    }
}

fn link(groups: &mut IndexMap<String, Group>, parent: &str, child: &str) {
    let g = groups.entry(parent.to_string()).or_default();
    if !g.children.iter().any(|c| c == child) {
        g.children.push(child.to_string());
    }
}

fn read_vars(
    what: &str,
    v: &Value,
    into: &mut IndexMap<String, Value>,
    problems: &mut Vec<String>,
) {
    match v {
        Value::Null => {}
        Value::Object(m) => {
            for (k, v) in m {
                into.insert(k.clone(), v.clone());
            }
        }
        _ => problems.push(format!("{what}: `vars` must be a mapping of variables")),
    }
}

fn read_group(
    name: &str,
    body: &Value,
    groups: &mut IndexMap<String, Group>,
    host_vars: &mut IndexMap<String, IndexMap<String, Value>>,
    problems: &mut Vec<String>,
) {
    groups.entry(name.to_string()).or_default();
    let body = match body {
        Value::Null => return,
        Value::Object(m) => m,
        _ => {
            problems.push(format!(
                "group `{name}` must be a mapping with `hosts`, `vars` or `children`"
            ));
            return;
        }
    };
    for (key, v) in body {
        match key.as_str() {
            "vars" => {
                let mut vars = std::mem::take(&mut groups[name].vars);
                read_vars(&format!("group `{name}`"), v, &mut vars, problems);
                groups[name].vars = vars;
            }
            "hosts" => match v {
                Value::Null => {}
                Value::Object(hs) => {
                    for (pattern, hv) in hs {
                        let names = match expand(pattern) {
                            Ok(n) => n,
                            Err(e) => {
                                problems.push(format!("group `{name}`, host `{pattern}`: {e}"));
                                continue;
                            }
                        };
                        for h in names {
                            let vars = host_vars.entry(h.clone()).or_default();
                            read_vars(&format!("host `{h}`"), hv, vars, problems);
                            let g = &mut groups[name];
                            if !g.hosts.contains(&h) {
                                g.hosts.push(h);
                            }
                        }
                    }
                }
                _ => problems.push(format!(
                    "group `{name}`: `hosts` must be a mapping of host names (a list is INI-style thinking: write `hosts: {{pi-1: {{}}}}`)"
                )),
            },
            "children" => match v {
                Value::Null => {}
                Value::Object(cs) => {
                    for (child, cv) in cs {
                        read_group(child, cv, groups, host_vars, problems);
                        link(groups, name, child);
                    }
                }
                _ => problems.push(format!(
                    "group `{name}`: `children` must be a mapping of group names"
                )),
            },
            other => problems.push(format!(
                "group `{name}`: unknown key `{other}` (a group holds `hosts`, `vars` and `children`; host variables go under the host)"
            )),
        }
    }
}

/// Whether `group` holds `host`, directly or through its children.
fn contains(
    groups: &IndexMap<String, Group>,
    group: &str,
    host: &str,
    seen: &mut BTreeSet<String>,
) -> bool {
    if !seen.insert(group.to_string()) {
        return false;
    }
    let Some(g) = groups.get(group) else {
        return false;
    };
    g.hosts.iter().any(|h| h == host) || g.children.iter().any(|c| contains(groups, c, host, seen))
}

/// Each group's depth: the longest chain of parents from `all` (Ansible's `depth`).
fn depths(groups: &IndexMap<String, Group>, problems: &mut Vec<String>) -> BTreeMap<String, usize> {
    fn walk(
        groups: &IndexMap<String, Group>,
        g: &str,
        d: usize,
        path: &mut Vec<String>,
        out: &mut BTreeMap<String, usize>,
        problems: &mut Vec<String>,
    ) {
        if path.iter().any(|p| p == g) {
            let msg = format!("groups form a cycle: {} → {g}", path.join(" → "));
            if !problems.contains(&msg) {
                problems.push(msg);
            }
            return;
        }
        let e = out.entry(g.to_string()).or_insert(0);
        *e = (*e).max(d);
        path.push(g.to_string());
        if let Some(grp) = groups.get(g) {
            for c in &grp.children {
                walk(groups, c, d + 1, path, out, problems);
            }
        }
        path.pop();
    }
    let mut out = BTreeMap::new();
    walk(groups, "all", 0, &mut Vec::new(), &mut out, problems);
    out
}

/// Expands Ansible's host ranges: `pi-[1:3]`, `node[01:10:2]`, `db-[a:c]`.
pub fn expand(pattern: &str) -> Result<Vec<String>, String> {
    let Some(open) = pattern.find('[') else {
        return Ok(vec![pattern.to_string()]);
    };
    let close = pattern[open..]
        .find(']')
        .map(|c| open + c)
        .ok_or("a `[` without its `]`")?;
    let (head, spec, tail) = (
        &pattern[..open],
        &pattern[open + 1..close],
        &pattern[close + 1..],
    );
    let parts: Vec<&str> = spec.split(':').collect();
    let (start, end, step) = match parts.as_slice() {
        [a, b] => (*a, *b, 1usize),
        [a, b, s] => (
            *a,
            *b,
            s.parse::<usize>()
                .ok()
                .filter(|s| *s > 0)
                .ok_or_else(|| format!("range step `{s}` is not a positive number"))?,
        ),
        _ => return Err(format!("`[{spec}]` is not a range such as [1:4] or [a:d]")),
    };
    let items: Vec<String> = if let (Ok(a), Ok(b)) = (start.parse::<u64>(), end.parse::<u64>()) {
        if a > b {
            return Err(format!("range `[{spec}]` runs backwards"));
        }
        let width = if start.len() > 1 && start.starts_with('0') {
            start.len()
        } else {
            0
        };
        (a..=b)
            .step_by(step)
            .map(|i| format!("{i:0width$}"))
            .collect()
    } else if let (Some(a), Some(b)) = (single_letter(start), single_letter(end)) {
        if a > b {
            return Err(format!("range `[{spec}]` runs backwards"));
        }
        (a..=b).step_by(step).map(String::from).collect()
    } else {
        return Err(format!(
            "`[{spec}]` is not a range of numbers or of single letters"
        ));
    };
    // The first range varies slowest, as Ansible lists them.
    let tails = expand(tail)?;
    let mut out = Vec::with_capacity(items.len() * tails.len());
    for i in &items {
        for rest in &tails {
            out.push(format!("{head}{i}{rest}"));
        }
    }
    Ok(out)
}

fn single_letter(s: &str) -> Option<char> {
    let mut c = s.chars();
    match (c.next(), c.next()) {
        (Some(ch), None) if ch.is_ascii_alphabetic() => Some(ch),
        _ => None,
    }
}

fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Ansible's boolean reading (`true`, `yes`, `on`, `1` and their opposites, any case).
fn as_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => n.as_i64().map(|i| i != 0),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" | "y" | "t" => Some(true),
            "false" | "no" | "off" | "0" | "n" | "f" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

fn host_from(
    name: &str,
    vars: &IndexMap<String, Value>,
    groups: Vec<String>,
) -> Result<InventoryHost, Vec<String>> {
    let mut problems = Vec::new();
    let mut text = |key: &str| -> Option<String> {
        let v = vars.get(key)?;
        let t = as_text(v);
        if t.is_none() {
            problems.push(format!("host `{name}`: `{key}` must be a string, got {v}"));
        }
        t
    };
    let address = text("ansible_host").unwrap_or_else(|| name.to_string());
    let user = text("ansible_user");
    let key_file = text("ansible_ssh_private_key_file").map(PathBuf::from);
    let profile = text("edgesim_profile");
    let known_hosts_file = text("edgesim_known_hosts_file").map(PathBuf::from);
    let port = match vars.get("ansible_port") {
        None => None,
        Some(v) => match as_text(v)
            .and_then(|t| t.parse::<u16>().ok())
            .filter(|p| *p > 0)
        {
            Some(p) => Some(p),
            None => {
                problems.push(format!(
                    "host `{name}`: `ansible_port` must be a port number (1-65535), got {v}"
                ));
                None
            }
        },
    };
    let host_key_checking = match vars.get("ansible_host_key_checking") {
        None => true,
        Some(v) => as_bool(v).unwrap_or_else(|| {
            problems.push(format!(
                "host `{name}`: `ansible_host_key_checking` must be true or false, got {v}"
            ));
            true
        }),
    };
    if address.is_empty() || address.chars().any(char::is_whitespace) {
        problems.push(format!(
            "host `{name}`: `{address}` is not a host name or address"
        ));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(InventoryHost {
        name: name.to_string(),
        address,
        user,
        port,
        key_file,
        profile,
        host_key_checking,
        known_hosts_file,
        groups,
        vars: vars.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(text: &str) -> Inventory {
        Inventory::parse(Path::new("inv.yaml"), text).unwrap()
    }

    fn problems(text: &str) -> Vec<String> {
        match Inventory::parse(Path::new("inv.yaml"), text) {
            Err(InventoryError::Invalid { problems, .. }) => problems,
            other => panic!("expected problems, got {other:?}"),
        }
    }

    /// edgesim reads the fixture as Ansible does: the same hosts, each with the same merged
    /// variables as `ansible-inventory --list` prints under `_meta.hostvars`.
    #[test]
    fn reads_the_same_hosts_and_variables_as_ansible_inventory() {
        let file = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/inventory.yaml"
        ));
        let ours = Inventory::load(file).unwrap();
        let run = std::process::Command::new("ansible-inventory")
            .arg("-i")
            .arg(file)
            .arg("--list")
            .env("ANSIBLE_INVENTORY_ENABLED", "yaml")
            .env("ANSIBLE_LOCAL_TEMP", std::env::temp_dir())
            .output();
        let found = run.as_ref().is_ok_and(|o| o.status.success());
        if !crate::testing::gate(
            "ansible",
            found,
            "ansible-inventory (Debian ansible-core) is not installed or failed",
        ) {
            return;
        }
        let listed: Value = serde_json::from_slice(&run.unwrap().stdout).unwrap();
        let theirs: BTreeMap<String, Value> =
            serde_json::from_value(listed["_meta"]["hostvars"].clone()).unwrap();
        let ours_vars: BTreeMap<String, Value> = ours
            .hostvars()
            .into_iter()
            .map(|(h, v)| (h, serde_json::to_value(v).unwrap()))
            .collect();
        assert_eq!(ours_vars, theirs);
        // Group membership as Ansible lists it (direct members).
        for (name, host) in &ours.hosts {
            for g in host.groups.iter().filter(|g| *g != "all") {
                let direct = listed[g]["hosts"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|h| h == name));
                let child_groups = listed[g]["children"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let via_child = child_groups.iter().any(|c| {
                    listed[c.as_str().unwrap()]["hosts"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|h| h == name))
                });
                assert!(direct || via_child, "{name} in {g}: {listed}");
            }
        }
        assert_eq!(
            ours.hosts["pi-02"].profile.as_deref(),
            Some("raspberry-pi-5-8gb")
        );
        assert_eq!(ours.hosts["orin-a"].user.as_deref(), Some("nvidia"));
        assert!(!ours.hosts["pi-spare"].host_key_checking);
    }

    /// The playbooks in ansible/ parse as ansible-playbook reads them, against the fixture
    /// inventory (plain ansible-core: only ansible.builtin modules).
    #[test]
    fn ansible_playbooks_pass_syntax_check() {
        let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
        let found = std::process::Command::new("ansible-playbook")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !crate::testing::gate("ansible", found, "ansible-playbook is not installed") {
            return;
        }
        let mut books: Vec<PathBuf> = std::fs::read_dir(root.join("ansible"))
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yml"))
            .collect();
        books.sort();
        assert!(books.len() >= 3, "{books:?}");
        for b in books {
            let out = std::process::Command::new("ansible-playbook")
                .arg("--syntax-check")
                .arg("-i")
                .arg(root.join("tests/fixtures/inventory.yaml"))
                .args(["-e", "k3s_server=pi-01"])
                .arg(&b)
                .env("ANSIBLE_LOCAL_TEMP", std::env::temp_dir())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}{}",
                b.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    #[test]
    fn ranges_expand_as_ansible_expands_them() {
        assert_eq!(expand("pi-[1:3]").unwrap(), ["pi-1", "pi-2", "pi-3"]);
        assert_eq!(expand("n[08:12:2]").unwrap(), ["n08", "n10", "n12"]);
        assert_eq!(expand("db-[a:c]").unwrap(), ["db-a", "db-b", "db-c"]);
        assert_eq!(
            expand("r[1:2]-[a:b]").unwrap(),
            ["r1-a", "r1-b", "r2-a", "r2-b"]
        );
        assert!(expand("x[3:1]").unwrap_err().contains("backwards"));
        assert!(expand("x[1:").unwrap_err().contains("`]`"));
        assert!(expand("x[1:3:0]").unwrap_err().contains("step"));
    }

    #[test]
    fn variables_merge_by_depth_priority_and_name_with_host_vars_last() {
        let i = inv(
            "all:\n  vars: {ansible_user: edge, level: all}\n  children:\n    site:\n      vars: {level: site, zone: z1}\n      children:\n        pis:\n          vars: {level: pis, edgesim_profile: raspberry-pi-5-8gb}\n          hosts:\n            pi-[1:2]:\n        a_first:\n          vars: {zone: a}\n          hosts: {pi-1: {level: host, ansible_port: 2222}}\n",
        );
        let pi1 = &i.hosts["pi-1"];
        assert_eq!(pi1.vars["level"], "host");
        // a_first and pis are both at depth 2: by name, pis (later) wins over a_first.
        assert_eq!(pi1.vars["zone"], "a");
        assert_eq!(pi1.user.as_deref(), Some("edge"));
        assert_eq!(pi1.port, Some(2222));
        assert_eq!(pi1.profile.as_deref(), Some("raspberry-pi-5-8gb"));
        assert_eq!(pi1.address, "pi-1");
        assert!(pi1.host_key_checking);
        assert_eq!(i.hosts["pi-2"].vars["level"], "pis");
        assert_eq!(i.hosts["pi-2"].vars["zone"], "z1");
        assert_eq!(i.hosts["pi-2"].groups, ["all", "site", "pis"]);
    }

    #[test]
    fn top_level_groups_and_ungrouped_hosts_belong_to_all() {
        let i = inv(
            "all:\n  hosts:\n    loose: {ansible_host: 10.0.0.9}\njetsons:\n  hosts: {orin-1: {ansible_host_key_checking: no}}\n",
        );
        assert_eq!(i.hosts["loose"].groups, ["all", "ungrouped"]);
        assert_eq!(i.hosts["loose"].address, "10.0.0.9");
        assert_eq!(i.hosts["orin-1"].groups, ["all", "jetsons"]);
        assert!(!i.hosts["orin-1"].host_key_checking);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let p = problems(
            "all:\n  hosts:\n    a: {ansible_port: 70000}\n    b: {ansible_host_key_checking: maybe}\n    c[1:: {}\n  bogus: 1\n",
        );
        assert_eq!(p.len(), 4, "{p:#?}");
        assert!(
            p.iter()
                .any(|m| m.contains("`ansible_port` must be a port"))
        );
        assert!(p.iter().any(|m| m.contains("ansible_host_key_checking")));
        assert!(p.iter().any(|m| m.contains("unknown key `bogus`")));
        assert!(p.iter().any(|m| m.contains("host `c[1:`")));
        assert!(problems("all:\n  hosts: [a, b]\n")[0].contains("mapping of host names"));
        assert!(problems("all: {}\n")[0].contains("no hosts"));
        assert!(
            problems("a:\n  children: {b: {children: {a: }}}\n  hosts: {h: }\n")[0]
                .contains("cycle")
        );
    }

    #[test]
    fn syntax_errors_and_empty_files_name_the_place() {
        match Inventory::parse(Path::new("inv.yaml"), "all:\n  hosts: {a: [}\n") {
            Err(InventoryError::Parse { line, .. }) => assert_eq!(line, 2),
            other => panic!("{other:?}"),
        }
        match Inventory::parse(Path::new("inv.yaml"), "  \n# nothing\n") {
            Err(InventoryError::Parse { message, .. }) => assert!(message.contains("empty")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn nodes_bind_by_name_then_by_profile_and_every_miss_is_reported() {
        let i = inv(
            "all:\n  hosts:\n    pi-a: {edgesim_profile: raspberry-pi-5-8gb}\n    pi-b: {edgesim_profile: raspberry-pi-5-8gb}\n    orin: {edgesim_profile: jetson-orin-nx-16gb}\n",
        );
        let n = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let b = i
            .bind(&n(&[
                ("gw", "raspberry-pi-5-8gb"),
                ("pi-a", "raspberry-pi-5-8gb"),
                ("orin", "jetson-orin-nx-16gb"),
            ]))
            .unwrap();
        assert_eq!(
            b.iter()
                .map(|b| (b.host.as_str(), b.by))
                .collect::<Vec<_>>(),
            [("pi-b", "profile"), ("pi-a", "name"), ("orin", "name")]
        );
        let Err(InventoryError::Invalid { problems, .. }) = i.bind(&n(&[
            ("x", "raspberry-pi-5-8gb"),
            ("y", "raspberry-pi-5-8gb"),
            ("z", "raspberry-pi-5-8gb"),
            ("orin", "raspberry-pi-5-8gb"),
            ("w", "cloud-small"),
        ])) else {
            panic!("expected problems")
        };
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(problems[0].contains("`orin`") && problems[0].contains("jetson-orin-nx-16gb"));
        assert!(problems[1].contains("node `z`") && problems[1].contains("taken"));
        assert!(problems[2].contains("node `w`") && problems[2].contains("none has"));
    }
}
