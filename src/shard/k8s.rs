//! `tracebench k8s --shards N --image IMAGE ... -- RUN_FLAGS`: the Kubernetes
//! manifests of a sharded run, printed as YAML for `kubectl apply -f -`. An
//! Indexed Job runs N pods (`completionMode: Indexed`, `parallelism =
//! completions = N`), each `tracebench run RUN_FLAGS --shard I/N` with I from
//! `JOB_COMPLETION_INDEX`, a common run id and `--start-at`, spread over
//! nodes by anti-affinity, writing its shard folder to a shared volume; a
//! Service per shard makes its OTLP receiver reachable (none when spans come
//! from Jaeger or Tempo); an optional Job merges the shards when they are
//! done. `docs/kubernetes.md` walks through it.

use super::Shard;
use crate::cli::{Cli, Command};
use crate::config::RunConfig;
use crate::trace::TraceSource;
use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use clap::{Args, Parser};
use serde_json::{json, Value};
use std::time::Duration;

/// Where the shared volume is mounted in every pod.
const RESULTS: &str = "/results";
/// The pod label that ties the pods of one run together.
const RUN_LABEL: &str = "tracebench.dev/run";
/// The default time from printing to the start, for the pods to be scheduled.
const START_DELAY: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

/// `tracebench k8s`.
#[derive(Args, Debug, Clone)]
pub struct K8sArgs {
    /// Shards (pods) of the run.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(super::MAX_SHARDS)))]
    pub shards: u32,
    /// The container image; `tracebench` must be on its PATH.
    #[arg(long)]
    pub image: String,
    /// Name of the Job, and the prefix of the other objects (default: tracebench-RUN_ID).
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// The run id every shard shares (default: a fresh one).
    #[arg(long)]
    pub run_id: Option<String>,
    /// When every shard starts sending (RFC 3339; default: 5 minutes from now).
    #[arg(long, value_name = "TIME", value_parser = super::clock::parse_start_at)]
    pub start_at: Option<DateTime<Utc>>,
    /// The PersistentVolumeClaim (ReadWriteMany) every pod writes its shard folder to.
    #[arg(long, default_value = "tracebench-results")]
    pub pvc: String,
    /// Also create that claim, of this size (e.g. 10Gi).
    #[arg(long, value_name = "QUANTITY")]
    pub pvc_size: Option<String>,
    /// The storage class of the claim created with --pvc-size.
    #[arg(long)]
    pub storage_class: Option<String>,
    /// CPU each shard asks for (a Kubernetes quantity: 2, 500m).
    #[arg(long, default_value = "2")]
    pub cpu: String,
    /// Memory each shard asks for, and its limit (2Gi, 512Mi).
    #[arg(long, default_value = "2Gi")]
    pub memory: String,
    /// Also print a Job that waits for the shards and merges them.
    #[arg(long)]
    pub merge_job: bool,
    /// Memory of the merge Job: the join holds every span, about 1 KB a traced request.
    #[arg(long, value_name = "QUANTITY", default_value = "2Gi")]
    pub merge_memory: String,
    /// How long the merge Job waits for the shards before merging what is there.
    #[arg(long, default_value = "2h", value_parser = crate::units::parse_duration)]
    pub merge_wait: Duration,
    /// The `tracebench run` flags of every shard, after `--`.
    #[arg(last = true, required = true, value_name = "RUN_FLAGS")]
    pub run_flags: Vec<String>,
}

/// Flags of `run` that `k8s` sets itself in each pod.
const SET_IN_PODS: [&str; 9] = [
    "--no-db",
    "--shard",
    "--shards",
    "--run-id",
    "--start-at",
    "--out",
    "--otlp-grpc",
    "--otlp-http",
    "--no-tui",
];

/// The manifests, as one YAML stream.
pub fn manifests(args: &K8sArgs) -> anyhow::Result<String> {
    let run_id = args.run_id.clone().unwrap_or_else(crate::run::new_run_id);
    let name = object_name(args.name.as_deref(), &run_id)?;
    for quantity in [
        Some(&args.cpu),
        Some(&args.memory),
        Some(&args.merge_memory),
        args.pvc_size.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        check_quantity(quantity)?;
    }
    let config = check_run_flags(&args.run_flags, args.shards, &run_id)?;
    let receive = config.trace.source == TraceSource::Otlp && !config.trace.is_off();
    let start_at = args.start_at.unwrap_or_else(|| Utc::now() + START_DELAY);
    let mut docs = Vec::new();
    if let Some(size) = &args.pvc_size {
        docs.push(claim(args, size));
    }
    if receive {
        docs.extend((0..args.shards).map(|i| service(args, &name, i)));
    }
    docs.push(shard_job(args, &name, &run_id, start_at, receive));
    if args.merge_job {
        docs.push(merge_job(args, &name, &run_id));
    }
    let mut out = format!(
        "# tracebench k8s: run {run_id} as {} shards, starting at {}.\n\
         # kubectl apply -f this file; the merged run is {RESULTS}/{run_id} on the claim {}.\n",
        args.shards,
        start_at.to_rfc3339(),
        args.pvc
    );
    for doc in docs {
        out.push_str("---\n");
        yaml(&doc, 0, &mut out);
    }
    Ok(out)
}

/// A DNS-1123 name for the objects, short enough for `NAME-otlp-I` and `NAME-merge`.
fn object_name(given: Option<&str>, run_id: &str) -> anyhow::Result<String> {
    if let Some(name) = given {
        let ok = name.len() <= 47
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !ok {
            bail!("--name `{name}`: give at most 47 lower-case letters, digits and '-', starting with a letter");
        }
        return Ok(name.to_string());
    }
    let mut name: String = format!("tracebench-{run_id}")
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(47)
        .collect();
    while name.ends_with('-') {
        name.pop();
    }
    Ok(name)
}

/// A Kubernetes quantity (`2`, `500m`, `1.5`, `2Gi`, `10G`).
fn check_quantity(text: &str) -> anyhow::Result<()> {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &text[digits.len()..];
    let number_ok = !digits.is_empty()
        && digits.parse::<f64>().is_ok_and(|v| v >= 0.0)
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.');
    let suffixes = [
        "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ];
    if !number_ok || !suffixes.contains(&suffix) {
        bail!("`{text}` is not a Kubernetes quantity (like 2, 500m, 2Gi)");
    }
    Ok(())
}

/// Checks the run flags as shard 0 would, so a bad flag fails here, not in N pods.
fn check_run_flags(flags: &[String], shards: u32, run_id: &str) -> anyhow::Result<RunConfig> {
    if let Some(flag) = flags.iter().find(|f| {
        let name = f.split_once('=').map_or(f.as_str(), |(n, _)| n);
        SET_IN_PODS.contains(&name)
    }) {
        bail!("{flag} is set by tracebench k8s in every pod; leave it out of RUN_FLAGS");
    }
    let shard = format!("0/{shards}");
    let argv = ["tracebench", "run"]
        .into_iter()
        .chain(flags.iter().map(String::as_str))
        .chain(["--shard", &shard, "--run-id", run_id]);
    let cli = Cli::try_parse_from(argv).context("RUN_FLAGS are not `tracebench run` flags")?;
    let Command::Run(run) = cli.command else {
        unreachable!("parsed as run")
    };
    RunConfig::from_args(&run).context("RUN_FLAGS")
}

fn labels(name: &str) -> Value {
    json!({"app.kubernetes.io/name": "tracebench", RUN_LABEL: name})
}

fn claim(args: &K8sArgs, size: &str) -> Value {
    let mut spec = json!({
        "accessModes": ["ReadWriteMany"],
        "resources": {"requests": {"storage": size}},
    });
    if let Some(class) = &args.storage_class {
        spec["storageClassName"] = json!(class);
    }
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": args.pvc, "namespace": args.namespace},
        "spec": spec,
    })
}

/// The Service in front of shard `index`'s OTLP receiver.
fn service(args: &K8sArgs, name: &str, index: u32) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": format!("{name}-otlp-{index}"), "namespace": args.namespace, "labels": labels(name)},
        "spec": {
            "selector": {
                RUN_LABEL: name,
                "batch.kubernetes.io/job-completion-index": index.to_string(),
            },
            "ports": [
                {"name": "otlp-grpc", "port": 4317, "targetPort": 4317, "protocol": "TCP"},
                {"name": "otlp-http", "port": 4318, "targetPort": 4318, "protocol": "TCP"},
            ],
        },
    })
}

/// The Indexed Job of the shards.
fn shard_job(
    args: &K8sArgs,
    name: &str,
    run_id: &str,
    start_at: DateTime<Utc>,
    receive: bool,
) -> Value {
    let n = args.shards;
    let mut run: Vec<String> = vec!["run".into()];
    run.extend(args.run_flags.iter().cloned());
    let start_at = start_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    run.extend(
        [
            "--shard",
            &format!("$(JOB_COMPLETION_INDEX)/{n}"),
            "--run-id",
            run_id,
            "--start-at",
            &start_at,
            "--out",
            RESULTS,
            "--no-tui",
            "--no-db",
        ]
        .map(str::to_string),
    );
    let mut container = json!({
        "name": "shard",
        "image": args.image,
        "command": ["tracebench"],
        "args": run,
        "env": [{
            "name": "JOB_COMPLETION_INDEX",
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}},
        }],
        "resources": {
            "requests": {"cpu": args.cpu, "memory": args.memory},
            "limits": {"memory": args.memory},
        },
        "volumeMounts": [{"name": "results", "mountPath": RESULTS}],
    });
    if receive {
        let argv = container["args"].as_array_mut().expect("args is a list");
        for flag in ["--otlp-grpc", "0.0.0.0:4317", "--otlp-http", "0.0.0.0:4318"] {
            argv.push(json!(flag));
        }
        container["ports"] = json!([
            {"name": "otlp-grpc", "containerPort": 4317, "protocol": "TCP"},
            {"name": "otlp-http", "containerPort": 4318, "protocol": "TCP"},
        ]);
    }
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": args.namespace, "labels": labels(name)},
        "spec": {
            "completionMode": "Indexed",
            "completions": n,
            "parallelism": n,
            // A shard that fails is not retried: a rerun would overwrite its
            // folder mid-run. The merge names it and marks the run partial.
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": labels(name)},
                "spec": {
                    "restartPolicy": "Never",
                    "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                        "weight": 100,
                        "podAffinityTerm": {
                            "topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {"matchLabels": {RUN_LABEL: name}},
                        },
                    }]}},
                    "containers": [container],
                    "volumes": [{"name": "results", "persistentVolumeClaim": {"claimName": args.pvc}}],
                },
            },
        },
    })
}

/// The Job that waits for the shards' folders and merges them.
fn merge_job(args: &K8sArgs, name: &str, run_id: &str) -> Value {
    let mut merge: Vec<String> = vec!["merge".into()];
    merge.extend((0..args.shards).map(|index| {
        let shard = Shard {
            index,
            count: args.shards,
        };
        format!("{RESULTS}/{}", shard.folder_name(run_id))
    }));
    let wait = humantime::format_duration(args.merge_wait).to_string();
    merge.extend(
        [
            "--out",
            &format!("{RESULTS}/{run_id}"),
            "--wait",
            &wait.replace(' ', ""),
            "--db",
            &format!("{RESULTS}/tracebench.db"),
        ]
        .map(str::to_string),
    );
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": format!("{name}-merge"), "namespace": args.namespace, "labels": labels(name)},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": labels(name)},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{
                        "name": "merge",
                        "image": args.image,
                        "command": ["tracebench"],
                        "args": merge,
                        "resources": {
                            "requests": {"cpu": "1", "memory": args.merge_memory},
                            "limits": {"memory": args.merge_memory},
                        },
                        "volumeMounts": [{"name": "results", "mountPath": RESULTS}],
                    }],
                    "volumes": [{"name": "results", "persistentVolumeClaim": {"claimName": args.pvc}}],
                },
            },
        },
    })
}

/// Block-style YAML of a JSON value: maps and lists indented, every string
/// double-quoted (a JSON string is a valid YAML double-quoted scalar).
fn yaml(value: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                out.push_str(&format!("{pad}{}:", yaml_key(key)));
                push_child(v, indent, out);
            }
        }
        Value::Array(items) => {
            for item in items {
                let mut nested = String::new();
                match item {
                    Value::Object(m) if !m.is_empty() => yaml(item, indent + 2, &mut nested),
                    Value::Array(a) if !a.is_empty() => yaml(item, indent + 2, &mut nested),
                    _ => nested = format!("{pad}  {}\n", scalar(item)),
                }
                out.push_str(&format!("{pad}- {}", &nested[indent + 2..]));
            }
        }
        _ => out.push_str(&format!("{pad}{}\n", scalar(value))),
    }
}

fn push_child(v: &Value, indent: usize, out: &mut String) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            yaml(v, indent + 2, out);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            yaml(v, indent + 2, out);
        }
        _ => out.push_str(&format!(" {}\n", scalar(v))),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
        other => other.to_string(),
    }
}

fn yaml_key(key: &str) -> String {
    let plain = key.starts_with(|c: char| c.is_ascii_alphabetic())
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    if plain {
        key.to_string()
    } else {
        Value::from(key).to_string()
    }
}

/// Parses `tracebench k8s ...` from an argument list (tests and examples).
pub fn parse(argv: &[&str]) -> anyhow::Result<K8sArgs> {
    let cli = Cli::try_parse_from(std::iter::once("tracebench").chain(argv.iter().copied()))?;
    match cli.command {
        Command::K8s(args) => Ok(*args),
        _ => bail!("not a k8s command line"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> K8sArgs {
        let mut argv = vec!["k8s", "--shards", "2", "--image", "tb:1", "--run-id", "r1"];
        argv.extend_from_slice(extra);
        parse(&argv).unwrap()
    }

    #[test]
    fn yaml_nests_maps_and_lists_and_quotes_strings() {
        let mut out = String::new();
        yaml(
            &json!({"a": {"b": [1, {"c": "x: y", "d": []}], "e": {}}, "f g": true}),
            0,
            &mut out,
        );
        assert_eq!(
            out,
            "a:\n  b:\n    - 1\n    - c: \"x: y\"\n      d: []\n  e: {}\n\"f g\": true\n"
        );
    }

    #[test]
    fn every_pods_arguments_are_a_run_of_its_shard() {
        let a = args(&["--", "--concurrency", "4", "--url", "http://vllm:8000"]);
        let at = Utc::now();
        let job = shard_job(&a, "tracebench-r1", "r1", at, true);
        let argv = job["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap();
        for index in 0..2 {
            // What the kubelet does with $(JOB_COMPLETION_INDEX) in each pod.
            let argv: Vec<String> = argv
                .iter()
                .map(|a| {
                    a.as_str()
                        .unwrap()
                        .replace("$(JOB_COMPLETION_INDEX)", &index.to_string())
                })
                .collect();
            let cli =
                Cli::try_parse_from(std::iter::once("tracebench".to_string()).chain(argv)).unwrap();
            let Command::Run(run) = cli.command else {
                panic!("a run")
            };
            let config = RunConfig::from_args(&run).unwrap();
            assert_eq!(config.shard, Some(Shard { index, count: 2 }));
            assert_eq!(config.folder_name("r1"), format!("r1.shard-{index}-of-2"));
            assert_eq!(config.trace.otlp_grpc.to_string(), "0.0.0.0:4317");
            assert_eq!(config.out.to_str(), Some(RESULTS));
        }
    }

    #[test]
    fn bad_flags_fail_before_anything_is_printed() {
        let e = manifests(&args(&["--", "--concurrency", "1"])).unwrap_err();
        assert!(
            format!("{e:#}").contains("--concurrency 1 split over 2 shards"),
            "{e:#}"
        );
        let e = manifests(&args(&["--", "--out", "x"])).unwrap_err();
        assert!(
            e.to_string().contains("--out is set by tracebench k8s"),
            "{e}"
        );
        let e = manifests(&args(&["--cpu", "two", "--", "--concurrency", "2"])).unwrap_err();
        assert!(e.to_string().contains("quantity"), "{e}");
        let e = manifests(&args(&["--name", "Bad_Name", "--", "--concurrency", "2"])).unwrap_err();
        assert!(e.to_string().contains("--name"), "{e}");
        assert_eq!(
            object_name(None, "20261207-120000-AB_c").unwrap(),
            "tracebench-20261207-120000-ab-c"
        );
    }
}
