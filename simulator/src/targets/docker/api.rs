//! The Docker Engine API as the docker target uses it (bollard): connection and probing,
//! images, node and workload containers, limits, exec, removal by label.

use std::collections::HashMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, ContainerUpdateBody, ExecConfig, HostConfig, ThrottleDevice,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StartContainerOptions,
};
use futures::StreamExt;

use crate::host::{HostError, Result};
use crate::profile::{NodeLimits, ProfileSpec};
use crate::workload::{BoxFuture, LaunchSpec, Process};

/// What the Engine told us about itself.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DockerInfo {
    pub server_version: String,
    pub api_version: String,
    pub cgroup_driver: String,
    pub cgroup_version: String,
    pub data_root: String,
    /// The whole-disk block device behind the data root, for block-IO throttles.
    pub storage_device: Option<String>,
}

impl DockerInfo {
    pub fn summary(&self) -> String {
        format!(
            "Docker Engine {} (API {}), cgroup v{} with the {} driver, block-IO throttles on {}",
            self.server_version,
            self.api_version,
            self.cgroup_version,
            self.cgroup_driver,
            self.storage_device
                .as_deref()
                .unwrap_or("no block device (not enforced)")
        )
    }
}

fn err(op: &'static str, obj: &str, e: impl std::fmt::Display) -> HostError {
    HostError::other(op, obj.to_string(), e.to_string())
}

/// A connection to the Engine.
#[derive(Clone)]
pub struct Docker {
    api: bollard::Docker,
    pub info: DockerInfo,
}

/// Connects to the Engine (`DOCKER_HOST`, else the local socket) and reads what it is.
pub async fn probe() -> std::result::Result<DockerInfo, String> {
    match tokio::time::timeout(Duration::from_secs(5), Docker::connect()).await {
        Ok(Ok(d)) => Ok(d.info),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the Docker Engine did not answer within 5 s".into()),
    }
}

/// The whole disk behind the filesystem that holds `path` (`/dev/vda` for `/dev/vda1`), as
/// block-IO throttles need it; `None` for filesystems without one (overlay, tmpfs).
fn disk_of(path: &str) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).ok()?.dev();
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let sys = std::fs::canonicalize(format!("/sys/dev/block/{major}:{minor}")).ok()?;
    // A partition's sysfs directory sits inside its disk's and has a `partition` file.
    let disk = if sys.join("partition").exists() {
        sys.parent()?.to_path_buf()
    } else {
        sys
    };
    let name = disk.file_name()?.to_string_lossy().into_owned();
    let dev = PathBuf::from("/dev").join(&name);
    dev.exists().then(|| dev.display().to_string())
}

impl Docker {
    pub async fn connect() -> Result<Docker> {
        let where_ = std::env::var("DOCKER_HOST").unwrap_or_else(|_| "/var/run/docker.sock".into());
        let api = bollard::Docker::connect_with_defaults()
            .map_err(|e| err("connecting to the Docker Engine at", &where_, e))?;
        let api = api
            .negotiate_version()
            .await
            .map_err(|e| err("connecting to the Docker Engine at", &where_, e))?;
        let info = api
            .info()
            .await
            .map_err(|e| err("asking the Docker Engine at", &where_, e))?;
        let version = api.version().await.ok();
        let data_root = info.docker_root_dir.clone().unwrap_or_default();
        let info = DockerInfo {
            server_version: info.server_version.clone().unwrap_or_default(),
            api_version: version.and_then(|v| v.api_version).unwrap_or_default(),
            cgroup_driver: info
                .cgroup_driver
                .map(|d| d.to_string())
                .unwrap_or_else(|| "cgroupfs".into()),
            cgroup_version: info
                .cgroup_version
                .map(|d| d.to_string())
                .unwrap_or_else(|| "1".into()),
            storage_device: disk_of(&data_root),
            data_root,
        };
        Ok(Docker { api, info })
    }

    /// An image's facts, or an error when the Engine does not have it.
    pub async fn image(&self, tag: &str) -> Result<ImageFacts> {
        let i = self
            .api
            .inspect_image(tag)
            .await
            .map_err(|e| err("inspecting image", tag, e))?;
        let labels = i.config.and_then(|c| c.labels).unwrap_or_default();
        Ok(ImageFacts {
            commands: labels
                .get("edgesim.commands")
                .map(|c| {
                    c.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    /// The block device throttles go to, if any.
    pub async fn storage_devices(&self) -> Option<StorageDevices> {
        self.info
            .storage_device
            .clone()
            .map(|d| StorageDevices { disk: d })
    }

    /// Creates and starts node containers, a few at a time; their init pids, in order.
    pub async fn start_nodes(&self, specs: &[NodeContainer]) -> Result<Vec<i64>> {
        futures::stream::iter(specs)
            .map(|s| self.start_node(s))
            .buffered(8)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect()
    }

    async fn start_node(&self, s: &NodeContainer) -> Result<i64> {
        let host = HostConfig {
            network_mode: Some("none".into()),
            extra_hosts: Some(s.extra_hosts.clone()),
            cgroup_parent: s.cgroup_parent.clone(),
            ..limits_config(&s.limits, s.throttle.as_ref())
        };
        let body = ContainerCreateBody {
            image: Some(s.image.clone()),
            hostname: Some(s.hostname.clone()),
            labels: Some(s.labels.iter().cloned().collect()),
            host_config: Some(host),
            ..Default::default()
        };
        let opts = CreateContainerOptionsBuilder::new()
            .name(&s.name)
            .platform(&s.platform)
            .build();
        self.api
            .create_container(Some(opts), body)
            .await
            .map_err(|e| err("creating container", &s.name, e))?;
        self.api
            .start_container(&s.name, None::<StartContainerOptions>)
            .await
            .map_err(|e| err("starting container", &s.name, e))?;
        self.pid(&s.name).await
    }

    /// The host pid of a running container's init.
    pub async fn pid(&self, name: &str) -> Result<i64> {
        let i = self
            .api
            .inspect_container(name, None)
            .await
            .map_err(|e| err("inspecting container", name, e))?;
        match i.state.and_then(|s| s.pid) {
            Some(p) if p > 0 => Ok(p),
            _ => Err(err("inspecting container", name, "it is not running")),
        }
    }

    /// Pauses or unpauses a container; one that is not running (or gone) is left alone.
    pub async fn pause(&self, name: &str, on: bool) -> Result<()> {
        let r = if on {
            self.api.pause_container(name).await
        } else {
            self.api.unpause_container(name).await
        };
        match r {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404 | 409,
                ..
            }) => Ok(()),
            Err(e) => Err(err(if on { "pausing" } else { "unpausing" }, name, e)),
        }
    }

    /// Holds a container to `l` (a container that is gone is left alone).
    pub async fn update_limits(&self, name: &str, l: &NodeLimits) -> Result<()> {
        let h = limits_config(l, None);
        let body = ContainerUpdateBody {
            nano_cpus: h.nano_cpus,
            memory: h.memory,
            memory_swap: h.memory_swap,
            pids_limit: h.pids_limit,
            // An empty value would leave the old pinning in place: unpinned means every CPU.
            cpuset_cpus: Some(l.cpus.clone().unwrap_or_else(|| {
                crate::host::cgroup::cpu_list(&crate::host::cgroup::allowed_cpus())
            })),
            ..Default::default()
        };
        match self.api.update_container(name, body).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(err("updating the limits of", name, e)),
        }
    }

    /// The limits a container holds, as the Engine reports them.
    pub async fn read_limits(&self, name: &str) -> Result<NodeLimits> {
        Ok(self.limits_held(name).await?.0)
    }

    /// [`Docker::read_limits`], with the container's `memory_swap` (memory plus swap; `None`
    /// when unset).
    pub async fn limits_held(&self, name: &str) -> Result<(NodeLimits, Option<u64>)> {
        let i = self
            .api
            .inspect_container(name, None)
            .await
            .map_err(|e| err("inspecting container", name, e))?;
        let h = i.host_config.unwrap_or_default();
        let swap = h.memory_swap.filter(|m| *m > 0).map(|m| m as u64);
        let period = 100_000u64;
        let nano = h.nano_cpus.filter(|n| *n > 0).map(|n| n as u64);
        let limits = NodeLimits {
            cpu_quota_us: nano.map(|n| n * period / 1_000_000_000),
            cpu_period_us: period,
            effective_cores: nano.map_or(0.0, |n| n as f64 / 1e9),
            memory_bytes: h.memory.filter(|m| *m > 0).map(|m| m as u64),
            pids_max: h.pids_limit.filter(|p| *p > 0).map(|p| p as u64),
            max_cpus: h
                .cpuset_cpus
                .as_deref()
                .and_then(crate::host::cgroup::parse_cpu_list)
                .filter(|v| !v.is_empty())
                .and_then(|v| u32::try_from(v.len()).ok()),
            cpus: h.cpuset_cpus.filter(|c| !c.is_empty()),
        };
        Ok((limits, swap))
    }

    /// The IPv4 address of a running container on Docker network `network`, and its init's
    /// host pid.
    pub async fn addr_and_pid(&self, name: &str, network: &str) -> Result<(Ipv4Addr, i64)> {
        let i = self
            .api
            .inspect_container(name, None)
            .await
            .map_err(|e| err("inspecting container", name, e))?;
        let pid = match i.state.and_then(|s| s.pid) {
            Some(p) if p > 0 => p,
            _ => return Err(err("inspecting container", name, "it is not running")),
        };
        let nets = i
            .network_settings
            .and_then(|n| n.networks)
            .unwrap_or_default();
        let Some(ep) = nets.get(network) else {
            let mut on: Vec<&String> = nets.keys().collect();
            on.sort();
            return Err(err(
                "finding the address of",
                name,
                format!("it is not on Docker network `{network}` (it is on: {on:?})"),
            ));
        };
        let addr = ep
            .ip_address
            .as_deref()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| {
                err(
                    "finding the address of",
                    name,
                    format!("it has no IPv4 address on `{network}`"),
                )
            })?;
        Ok((addr, pid))
    }

    /// Starts a workload container (created on first use, started again afterwards, so its
    /// filesystem survives restarts as a board's does); its output goes to the log files.
    pub async fn run_workload(
        &self,
        c: &WorkloadContainer,
        s: &LaunchSpec,
    ) -> std::io::Result<ContainerProcess> {
        let exists = self.api.inspect_container(&c.name, None).await.is_ok();
        if !exists {
            let host = HostConfig {
                network_mode: Some(format!("container:{}", c.node_container)),
                cgroup_parent: c.cgroup_parent.clone(),
                binds: Some(vec![format!(
                    "{}:{}",
                    c.workdir_mount.0.display(),
                    c.workdir_mount.1
                )]),
                ..limits_config(&c.limits, c.throttle.as_ref())
            };
            let body = ContainerCreateBody {
                image: Some(c.image.clone()),
                cmd: (!s.argv.is_empty()).then(|| s.argv.clone()),
                env: Some(s.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
                labels: Some(c.labels.iter().cloned().collect()),
                host_config: Some(host),
                ..Default::default()
            };
            let opts = CreateContainerOptionsBuilder::new()
                .name(&c.name)
                .platform(&c.platform)
                .build();
            self.api
                .create_container(Some(opts), body)
                .await
                .map_err(std::io::Error::other)?;
        }
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i32);
        self.api
            .start_container(&c.name, None::<StartContainerOptions>)
            .await
            .map_err(std::io::Error::other)?;
        let pid = self.pid(&c.name).await.unwrap_or(0) as i32;
        // Logs of this start only (`since` is in seconds: the previous start's last lines
        // may repeat when a restart follows within the same second).
        let logs = self.api.logs(
            &c.name,
            Some(
                LogsOptionsBuilder::new()
                    .follow(true)
                    .stdout(true)
                    .stderr(true)
                    .since(since)
                    .build(),
            ),
        );
        let pump = tokio::spawn(pump_output(logs, s.stdout.clone(), s.stderr.clone()));
        Ok(ContainerProcess {
            api: self.api.clone(),
            name: c.name.clone(),
            pid,
            pump: Some(pump),
        })
    }

    /// Starts a command inside a node container; its output goes to the log files.
    pub async fn exec_workload(
        &self,
        container: &str,
        s: &LaunchSpec,
    ) -> std::io::Result<ExecProcess> {
        let cfg = ExecConfig {
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            cmd: Some(s.argv.clone()),
            env: Some(s.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            working_dir: Some("/tmp".into()),
            ..Default::default()
        };
        let id = self
            .api
            .create_exec(container, cfg)
            .await
            .map_err(std::io::Error::other)?
            .id;
        let started = self
            .api
            .start_exec(&id, None)
            .await
            .map_err(std::io::Error::other)?;
        let bollard::exec::StartExecResults::Attached { output, .. } = started else {
            return Err(std::io::Error::other("the exec started detached"));
        };
        let pump = tokio::spawn(pump_output(output, s.stdout.clone(), s.stderr.clone()));
        // The Engine knows the pid once the process runs.
        let mut pid = 0;
        for _ in 0..100 {
            let i = self
                .api
                .inspect_exec(&id)
                .await
                .map_err(std::io::Error::other)?;
            pid = i.pid.unwrap_or(0) as i32;
            if pid > 0 || i.running == Some(false) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(ExecProcess {
            api: self.api.clone(),
            id,
            pid,
            pump: Some(pump),
        })
    }

    /// `edgesim exec`: a command in a container, its output passed through; its exit code.
    pub async fn exec_interactive(
        &self,
        container: &str,
        argv: &[String],
        env: &[(String, String)],
    ) -> Result<i32> {
        let code = self
            .exec_to_end(container, argv, env, |o| match o {
                bollard::container::LogOutput::StdErr { message } => {
                    let _ = std::io::stderr().write_all(&message);
                }
                other => {
                    let _ = std::io::stdout().write_all(&other.into_bytes());
                }
            })
            .await?;
        let _ = std::io::stdout().flush();
        Ok(code.unwrap_or(0) as i32)
    }

    /// Runs `argv` with `env` in `container` to its end, each piece of its output to `sink`;
    /// its exit code, when the Engine knows it.
    async fn exec_to_end(
        &self,
        container: &str,
        argv: &[String],
        env: &[(String, String)],
        mut sink: impl FnMut(bollard::container::LogOutput),
    ) -> Result<Option<i64>> {
        let cfg = ExecConfig {
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            cmd: Some(argv.to_vec()),
            env: Some(env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            ..Default::default()
        };
        let id = self
            .api
            .create_exec(container, cfg)
            .await
            .map_err(|e| err("exec in", container, e))?
            .id;
        let started = self
            .api
            .start_exec(&id, None)
            .await
            .map_err(|e| err("exec in", container, e))?;
        if let bollard::exec::StartExecResults::Attached { mut output, .. } = started {
            while let Some(Ok(o)) = output.next().await {
                sink(o);
            }
        }
        let i = self
            .api
            .inspect_exec(&id)
            .await
            .map_err(|e| err("exec in", container, e))?;
        Ok(i.exit_code)
    }

    async fn labelled(&self, filter: &str) -> Vec<(String, String)> {
        let mut filters = HashMap::new();
        filters.insert("label".to_string(), vec![filter.to_string()]);
        let opts = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        self.api
            .list_containers(Some(opts))
            .await
            .unwrap_or_default()
            .into_iter()
            .filter_map(|c| {
                let run = c.labels.as_ref()?.get("edgesim.run")?.clone();
                Some((c.id?, run))
            })
            .collect()
    }

    async fn remove(&self, id: &str) -> Option<String> {
        let opts = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match self.api.remove_container(id, Some(opts)).await {
            Ok(())
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => None,
            Err(e) => Some(format!("removing container {id}: {e}")),
        }
    }

    /// Removes every container of run `run` (and its anonymous volumes). Errors, if any.
    pub async fn remove_run(&self, run: &str) -> Vec<String> {
        let ids = self.labelled(&format!("edgesim.run={run}")).await;
        futures::stream::iter(ids)
            .map(|(id, _)| async move { self.remove(&id).await })
            .buffer_unordered(8)
            .filter_map(|e| async move { e })
            .collect()
            .await
    }

    /// Removes containers of runs not in `live`. How many, and errors.
    pub async fn remove_orphans(&self, live: &[String]) -> (usize, Vec<String>) {
        let mut n = 0;
        let mut errors = Vec::new();
        for (id, run) in self.labelled("edgesim.run").await {
            if live.contains(&run) {
                continue;
            }
            match self.remove(&id).await {
                None => n += 1,
                Some(e) => errors.push(e),
            }
        }
        (n, errors)
    }
}

/// What the kind target asks of the Engine beyond the docker target: its cluster's registry
/// and commands inside Kind's node containers.
#[cfg(feature = "kube")]
impl Docker {
    /// Whether a container named `name` exists (running or not).
    pub async fn container_exists(&self, name: &str) -> bool {
        self.api.inspect_container(name, None).await.is_ok()
    }

    /// Pulls `image` unless the Engine has it.
    pub async fn ensure_image(&self, image: &str) -> Result<()> {
        if self.api.inspect_image(image).await.is_ok() {
            return Ok(());
        }
        let opts = bollard::query_parameters::CreateImageOptionsBuilder::new()
            .from_image(image)
            .build();
        let mut pull = self.api.create_image(Some(opts), None, None);
        while let Some(step) = pull.next().await {
            step.map_err(|e| err("pulling image", image, e))?;
        }
        Ok(())
    }

    /// Starts container `name` from `image` on Docker network `network`, labelled `labels`,
    /// with its TCP port `port` published on 127.0.0.1 at a port the Engine picks; returns
    /// that host port.
    pub async fn start_published(
        &self,
        name: &str,
        image: &str,
        network: &str,
        labels: &[(String, String)],
        port: u16,
    ) -> Result<u16> {
        let key = format!("{port}/tcp");
        let bindings = HashMap::from([(
            key.clone(),
            Some(vec![bollard::models::PortBinding {
                host_ip: Some("127.0.0.1".into()),
                host_port: Some(String::new()),
            }]),
        )]);
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            labels: Some(labels.iter().cloned().collect()),
            exposed_ports: Some(vec![key.clone()]),
            host_config: Some(HostConfig {
                network_mode: Some(network.to_string()),
                port_bindings: Some(bindings),
                ..Default::default()
            }),
            ..Default::default()
        };
        let opts = CreateContainerOptionsBuilder::new().name(name).build();
        self.api
            .create_container(Some(opts), body)
            .await
            .map_err(|e| err("creating container", name, e))?;
        self.api
            .start_container(name, None::<StartContainerOptions>)
            .await
            .map_err(|e| err("starting container", name, e))?;
        let i = self
            .api
            .inspect_container(name, None)
            .await
            .map_err(|e| err("inspecting container", name, e))?;
        i.network_settings
            .and_then(|n| n.ports)
            .and_then(|p| p.get(&key).cloned().flatten())
            .and_then(|b| b.into_iter().find_map(|b| b.host_port?.parse().ok()))
            .ok_or_else(|| {
                err(
                    "publishing a port of",
                    name,
                    format!("no host port for {key}"),
                )
            })
    }

    /// Tags local image `local` as `remote` (`registry/repository:tag`) and pushes it. The
    /// registry must take it without credentials (a registry on the lab's network, or one the
    /// Engine is logged in to through its own configuration).
    pub async fn push(&self, local: &str, remote: &str) -> Result<()> {
        let (repo, tag) = match remote.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, t),
            _ => (remote, "latest"),
        };
        let opts = bollard::query_parameters::TagImageOptionsBuilder::new()
            .repo(repo)
            .tag(tag)
            .build();
        self.api
            .tag_image(local, Some(opts))
            .await
            .map_err(|e| err("tagging image", local, e))?;
        let opts = bollard::query_parameters::PushImageOptionsBuilder::new()
            .tag(tag)
            .build();
        let mut push = self.api.push_image(repo, Some(opts), None);
        while let Some(step) = push.next().await {
            let step = step.map_err(|e| err("pushing image", remote, e))?;
            if let Some(e) = step.error_detail.and_then(|d| d.message) {
                return Err(err("pushing image", remote, e));
            }
        }
        Ok(())
    }

    /// Runs `argv` in container `container` to its end; its exit code and its output
    /// (stdout and stderr together).
    pub async fn exec_output(&self, container: &str, argv: &[String]) -> Result<(i64, String)> {
        let mut out = Vec::new();
        let code = self
            .exec_to_end(container, argv, &[], |o| {
                out.extend_from_slice(&o.into_bytes())
            })
            .await?;
        Ok((
            code.unwrap_or(-1),
            String::from_utf8_lossy(&out).into_owned(),
        ))
    }
}

/// Facts of an image that validation needs.
#[derive(Debug, Clone)]
pub struct ImageFacts {
    /// Commands a node image offers (its `edgesim.commands` label).
    pub commands: Vec<String>,
}

/// The disk block-IO throttles apply to.
#[derive(Debug, Clone)]
pub struct StorageDevices {
    pub disk: String,
}

/// Block-IO throttles of one container.
#[derive(Debug, Clone, PartialEq)]
pub struct Throttle {
    pub device: String,
    pub read_bps: Option<u64>,
    pub write_bps: Option<u64>,
    pub read_iops: Option<u64>,
    pub write_iops: Option<u64>,
}

impl Throttle {
    /// The throttles of a profile's storage ([`crate::profile::storage_throttle`]) on `d`;
    /// `None` when the profile gives no storage figure.
    pub fn of(p: &ProfileSpec, d: &StorageDevices) -> Option<Throttle> {
        let t = crate::profile::storage_throttle(p)?;
        Some(Throttle {
            device: d.disk.clone(),
            read_bps: t.read_bytes_per_sec,
            write_bps: t.write_bytes_per_sec,
            read_iops: t.read_iops,
            write_iops: t.write_iops,
        })
    }
}

/// Docker's limits for a node's shape: CPU as `nano_cpus` (the CFS quota of `netns`) on the
/// node's pinned CPUs (`cpuset_cpus`), memory with no swap beyond it, tasks, block IO.
fn limits_config(l: &NodeLimits, t: Option<&Throttle>) -> HostConfig {
    let dev = |rate: Option<u64>| {
        t.and_then(|t| {
            rate.map(|r| {
                vec![ThrottleDevice {
                    path: Some(t.device.clone()),
                    rate: Some(r as i64),
                }]
            })
        })
    };
    HostConfig {
        nano_cpus: l
            .cpu_quota_us
            .map(|q| (q as i64) * 1_000_000_000 / l.cpu_period_us.max(1) as i64),
        memory: l.memory_bytes.map(|m| m as i64),
        memory_swap: l.memory_bytes.map(|m| m as i64),
        pids_limit: l.pids_max.map(|p| p as i64),
        cpuset_cpus: l.cpus.clone(),
        blkio_device_read_bps: dev(t.and_then(|t| t.read_bps)),
        blkio_device_write_bps: dev(t.and_then(|t| t.write_bps)),
        blkio_device_read_iops: dev(t.and_then(|t| t.read_iops)),
        blkio_device_write_iops: dev(t.and_then(|t| t.write_iops)),
        ..Default::default()
    }
}

/// A node container to create.
pub struct NodeContainer {
    pub name: String,
    pub image: String,
    pub platform: String,
    pub hostname: String,
    pub labels: Vec<(String, String)>,
    pub limits: NodeLimits,
    pub throttle: Option<Throttle>,
    pub cgroup_parent: Option<String>,
    pub extra_hosts: Vec<String>,
}

/// A workload container to create (in its node's network namespace).
pub struct WorkloadContainer {
    pub name: String,
    pub image: String,
    pub platform: String,
    pub node_container: String,
    pub labels: Vec<(String, String)>,
    pub limits: NodeLimits,
    pub throttle: Option<Throttle>,
    pub cgroup_parent: Option<String>,
    /// Host folder and where the container sees it.
    pub workdir_mount: (PathBuf, String),
}

/// Copies a container's or exec's output into the log files until it ends.
async fn pump_output(
    mut s: impl futures::Stream<
        Item = std::result::Result<bollard::container::LogOutput, bollard::errors::Error>,
    > + Unpin,
    stdout: PathBuf,
    stderr: PathBuf,
) {
    let open = |p: &PathBuf| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
    };
    let (mut out, mut errf) = (open(&stdout), open(&stderr));
    while let Some(Ok(o)) = s.next().await {
        let (f, m) = match o {
            bollard::container::LogOutput::StdErr { message } => (&mut errf, message),
            other => (&mut out, other.into_bytes()),
        };
        if let Some(f) = f {
            let _ = f.write_all(&m);
        }
    }
}

fn exit_status(code: i64) -> std::process::ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    // Docker reports a container killed by signal N as 128 + N.
    if (129..=159).contains(&code) {
        std::process::ExitStatus::from_raw((code - 128) as i32)
    } else {
        std::process::ExitStatus::from_raw(((code & 0xff) as i32) << 8)
    }
}

/// A workload container, as the supervisor drives it.
pub struct ContainerProcess {
    api: bollard::Docker,
    name: String,
    pid: i32,
    pump: Option<tokio::task::JoinHandle<()>>,
}

impl Process for ContainerProcess {
    fn pid(&self) -> i32 {
        self.pid
    }
    fn signal(&mut self, sig: i32) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let opts = KillContainerOptionsBuilder::new()
                .signal(&sig.to_string())
                .build();
            // A container that already stopped has nothing to signal.
            let _ = self.api.kill_container(&self.name, Some(opts)).await;
        })
    }
    fn wait(&mut self) -> BoxFuture<'_, Option<std::process::ExitStatus>> {
        Box::pin(async move {
            let mut w = self.api.wait_container(&self.name, None);
            let code = match w.next().await {
                Some(Ok(r)) => Some(r.status_code),
                Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => {
                    Some(code)
                }
                _ => None,
            };
            if let Some(p) = self.pump.take() {
                let _ = tokio::time::timeout(Duration::from_secs(1), p).await;
            }
            code.map(exit_status)
        })
    }
}

impl Drop for ContainerProcess {
    fn drop(&mut self) {
        if let Some(p) = self.pump.take() {
            p.abort();
        }
    }
}

/// A command inside a node container, as the supervisor drives it.
pub struct ExecProcess {
    api: bollard::Docker,
    id: String,
    pid: i32,
    pump: Option<tokio::task::JoinHandle<()>>,
}

impl Process for ExecProcess {
    fn pid(&self) -> i32 {
        self.pid
    }
    fn signal(&mut self, sig: i32) -> BoxFuture<'_, ()> {
        if self.pid > 0 {
            // SAFETY: kill(2) on the host pid the Engine reported for this exec; no memory
            // is involved.
            unsafe {
                libc::kill(self.pid, sig);
            }
        }
        Box::pin(async {})
    }
    fn wait(&mut self) -> BoxFuture<'_, Option<std::process::ExitStatus>> {
        Box::pin(async move {
            // The output stream ends when the process exits.
            if let Some(p) = self.pump.take() {
                let _ = p.await;
            }
            for _ in 0..200 {
                match self.api.inspect_exec(&self.id).await {
                    Ok(i) if i.running == Some(false) => return i.exit_code.map(exit_status),
                    Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                    Err(_) => return None,
                }
            }
            None
        })
    }
}

/// `rel` below every cgroup hierarchy mounted here, including those edgesim does not manage
/// but a container runtime wrote to, where it exists.
fn in_every_hierarchy(rel: &str) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    crate::host::cgroup::parse_mountinfo(&text)
        .into_iter()
        .filter(|m| m.fs_type.starts_with("cgroup"))
        .map(|m| m.mount_point.join(rel))
        .filter(|d| d.is_dir())
        .collect()
}

/// Removes cgroup `rel` (depth-first, empty directories only) in every hierarchy.
pub fn remove_cgroup_everywhere(rel: &str) -> Vec<String> {
    let mut errors = Vec::new();
    for dir in in_every_hierarchy(rel) {
        rmdir_tree(&dir, &mut errors);
    }
    errors
}

/// Removes cgroup `rel` itself where it is empty, in every hierarchy (a shared parent that
/// another run still uses stays).
pub fn remove_empty_cgroup_everywhere(rel: &str) {
    for dir in in_every_hierarchy(rel) {
        let _ = std::fs::remove_dir(dir);
    }
}

fn rmdir_tree(dir: &std::path::Path, errors: &mut Vec<String>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                rmdir_tree(&e.path(), errors);
            }
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            errors.push(format!("removing cgroup {}: {e}", dir.display()));
        }
        _ => {}
    }
}
