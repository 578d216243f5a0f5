//! `tracebench k8s`: the manifests' shape is snapshot-tested, and every
//! document is validated against the Kubernetes OpenAPI schemas by the
//! `kubernetes-models` validators (installed by `scripts/k8s-validate/setup.sh`,
//! which `scripts/test.sh` runs).

mod cli_support;

use cli_support::tracebench;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const OTLP: [&str; 17] = [
    "k8s",
    "--shards",
    "3",
    "--image",
    "registry.example/tracebench:0.1",
    "--run-id",
    "r1",
    "--start-at",
    "2026-01-31T12:00:00Z",
    "--pvc-size",
    "5Gi",
    "--merge-job",
    "--",
    "--url",
    "http://vllm:8000",
    "--concurrency",
    "30",
];

const JAEGER: [&str; 20] = [
    "k8s",
    "--shards",
    "2",
    "--image",
    "registry.example/tracebench:0.1",
    "--run-id",
    "r2",
    "--start-at",
    "2026-01-31T12:00:00Z",
    "--cpu",
    "500m",
    "--memory",
    "512Mi",
    "--",
    "--url",
    "http://vllm:8000",
    "--rate",
    "20",
    "--trace-source",
    "jaeger",
];

const JAEGER_URL: [&str; 2] = ["--jaeger-url", "http://jaeger-query:16686"];

fn manifests(args: &[&str]) -> String {
    let out = tracebench(Path::new("."), args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn snapshot(name: &str, text: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, text).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_SNAPSHOTS=1 writes it)", path.display()));
    assert_eq!(
        text, expected,
        "{name} changed (UPDATE_SNAPSHOTS=1 rewrites it)"
    );
}

/// The validator's verdict on a YAML stream, or `None` when it is not installed.
fn validate(yaml: &str) -> Option<(bool, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/k8s-validate");
    let installed = dir.join("node_modules/kubernetes-models").is_dir()
        && Command::new("node").arg("--version").output().is_ok();
    if !installed {
        assert!(
            std::env::var_os("TRACEBENCH_REQUIRE_K8S_VALIDATOR").is_none(),
            "the Kubernetes validator is not installed: run scripts/k8s-validate/setup.sh"
        );
        eprintln!(
            "\n\n*** SKIPPED the Kubernetes schema validation: run scripts/k8s-validate/setup.sh \
             (or set TRACEBENCH_REQUIRE_K8S_VALIDATOR=1 to make this fail) ***\n"
        );
        return None;
    }
    let mut child = Command::new("node")
        .arg(dir.join("validate.mjs"))
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Some((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    ))
}

#[test]
fn the_manifests_keep_their_shape() {
    snapshot("k8s-otlp.yaml", &manifests(&OTLP));
    let jaeger: Vec<&str> = JAEGER.iter().chain(&JAEGER_URL).copied().collect();
    snapshot("k8s-jaeger.yaml", &manifests(&jaeger));
}

#[test]
fn the_manifests_are_valid_kubernetes_objects() {
    let otlp = manifests(&OTLP);
    let Some((valid, report)) = validate(&otlp) else {
        return;
    };
    assert!(valid, "{report}");
    assert_eq!(report.matches("valid v1 Service").count(), 3, "{report}");
    for kind in [
        "PersistentVolumeClaim",
        "Job tracebench-r1\n",
        "Job tracebench-r1-merge",
    ] {
        assert!(report.contains(kind), "{kind}: {report}");
    }
    let jaeger: Vec<&str> = JAEGER.iter().chain(&JAEGER_URL).copied().collect();
    let (valid, report) = validate(&manifests(&jaeger)).unwrap();
    assert!(valid, "{report}");
    assert!(
        !report.contains("Service"),
        "spans come from Jaeger: {report}"
    );

    // The validator does reject what Kubernetes would.
    let broken = otlp.replacen("completions: 3", "completions: \"three\"", 1);
    let (valid, report) = validate(&broken).unwrap();
    assert!(
        !valid && report.contains("completions must be integer"),
        "{report}"
    );
}

#[test]
fn bad_run_flags_fail_before_any_manifest() {
    let out = tracebench(
        Path::new("."),
        &[
            "k8s",
            "--shards",
            "4",
            "--image",
            "i",
            "--",
            "--concurrency",
            "2",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--concurrency 2 split over 4 shards"), "{err}");
}
