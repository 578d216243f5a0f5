//! The request bodies tracebench builds for the new workloads (chat with
//! images, multi-turn history with the model's replies, reasoning options,
//! the two-pass first pass, a trace-replay completions prompt) are accepted by
//! vLLM's own request models (`ChatCompletionRequest`, `CompletionRequest`),
//! with no field vLLM would ignore. Runs vLLM's Python package from the vLLM
//! CPU build's virtual environment (`TRACEBENCH_VLLM_VENV`, default
//! `$HOME/.cache/vllm-cpu/venv`); skipped, saying why, when it is absent.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tracebench::record::Endpoint;
use tracebench::workload::images::{generate, ImageFormat};
use tracebench::workload::sessions::{parse, SessionRun};
use tracebench::workload::{BodyOptions, Item, Prompt};

fn venv() -> Option<PathBuf> {
    let dir = std::env::var_os("TRACEBENCH_VLLM_VENV")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/vllm-cpu/venv")))?;
    dir.join("bin/python").is_file().then_some(dir)
}

const CHECK: &str = r#"
import json, sys
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest
models = {"chat": ChatCompletionRequest, "completions": CompletionRequest}
for line in open(sys.argv[1]):
    case = json.loads(line)
    model = models[case["endpoint"]]
    try:
        request = model.model_validate(case["body"])
    except Exception as e:
        print(json.dumps({"name": case["name"], "ok": False, "why": str(e)[:400]}))
        continue
    ignored = sorted(set(case["body"]) - model.field_names)
    messages = getattr(request, "messages", None) or []
    parts = [p.get("type") for m in messages if isinstance(m.get("content"), list) for p in m["content"]]
    print(json.dumps({"name": case["name"], "ok": not ignored, "ignored": ignored,
                      "roles": [m["role"] for m in messages], "parts": parts,
                      "max_tokens": request.max_tokens, "stream": request.stream}))
"#;

/// The bodies to check, by name, with their endpoint.
fn bodies() -> Vec<(&'static str, Endpoint, Value)> {
    let chat = BodyOptions {
        ignore_eos: true,
        temperature: Some(0.0),
        extra_body: Some(
            json!({"stream_options": {"continuous_usage_stats": true}})
                .as_object()
                .unwrap()
                .clone(),
        ),
        ..BodyOptions::new(Endpoint::Chat, "tiny")
    };
    let parse_body = |b: bytes::Bytes| serde_json::from_slice::<Value>(&b).unwrap();
    let mut with_images = Item::new(Prompt::Text("what is in these pictures".into()), Some(16));
    with_images.images = vec![
        Arc::new(generate(1, 64, 48, ImageFormat::Jpeg)),
        Arc::new(generate(2, 32, 32, ImageFormat::Png)),
    ];
    let session = parse(
        &json!({"session_id": "s1", "turns": [
            {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}], "max_tokens": 8},
            {"prompt": "tell me more", "max_tokens": 8, "images": ["data:image/png;base64,iVBORw0KGgo="]},
            {"prompt": "thanks", "max_tokens": 4}
        ]}),
        None,
        Path::new("."),
    )
    .unwrap();
    let mut run = SessionRun::new(session, 0, false, Arc::new(chat.clone()), "r".into());
    let mut turns = Vec::new();
    while let Some((request, _)) = run.next_turn() {
        turns.push(parse_body(request.body));
        run.answered("a reply with \"quotes\" and\nlines".into());
    }
    let reasoning = BodyOptions {
        extra_body: Some(
            json!({"include_reasoning": true, "chat_template_kwargs": {"enable_thinking": true}})
                .as_object()
                .unwrap()
                .clone(),
        ),
        ..BodyOptions::new(Endpoint::Chat, "tiny")
    };
    let two_pass = BodyOptions {
        two_pass: true,
        stream: false,
        ..BodyOptions::new(Endpoint::Chat, "tiny")
    };
    let prepared = two_pass.prepare(
        0,
        "r",
        false,
        &Item::new(Prompt::Text("a b c".into()), Some(8)),
    );
    let completions = BodyOptions::new(Endpoint::Completions, "tiny");
    vec![
        (
            "chat with images",
            Endpoint::Chat,
            parse_body(chat.body(&with_images)),
        ),
        (
            "session turn 3 (history with replies)",
            Endpoint::Chat,
            turns.pop().unwrap(),
        ),
        (
            "session turn 2 (an image in the turn)",
            Endpoint::Chat,
            turns.pop().unwrap(),
        ),
        (
            "reasoning",
            Endpoint::Chat,
            parse_body(reasoning.body(&Item::new(Prompt::Text("think".into()), Some(32)))),
        ),
        (
            "two-pass first pass",
            Endpoint::Chat,
            parse_body(prepared.meta.first_pass.unwrap()),
        ),
        (
            "two-pass full pass",
            Endpoint::Chat,
            parse_body(prepared.body),
        ),
        (
            "trace replay completions",
            Endpoint::Completions,
            parse_body(completions.body(&Item::new(Prompt::Text("w ".repeat(600)), Some(5)))),
        ),
        // Proves the check bites: vLLM must refuse this one.
        (
            "refused on purpose",
            Endpoint::Chat,
            json!({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": "many"}),
        ),
    ]
}

#[test]
fn vllm_accepts_the_bodies_tracebench_builds() {
    let Some(venv) = venv() else {
        println!("skipped: no vLLM virtual environment (set TRACEBENCH_VLLM_VENV or install the vLLM CPU build at $HOME/.cache/vllm-cpu)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("bodies.jsonl");
    let bodies = bodies();
    let lines: String = bodies
        .iter()
        .map(|(name, endpoint, body)| {
            let endpoint = match endpoint {
                Endpoint::Chat => "chat",
                Endpoint::Completions => "completions",
            };
            format!(
                "{}\n",
                json!({"name": name, "endpoint": endpoint, "body": body})
            )
        })
        .collect();
    std::fs::write(&cases, lines).unwrap();
    let output = std::process::Command::new(venv.join("bin/python"))
        .arg("-c")
        .arg(CHECK)
        .arg(&cases)
        .env("VLLM_TARGET_DEVICE", "cpu")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), bodies.len());
    let result = |name: &str| results.iter().find(|r| r["name"] == name).unwrap();
    for (name, _, _) in &bodies[..bodies.len() - 1] {
        assert_eq!(result(name)["ok"], true, "{name}: {}", result(name));
    }
    assert_eq!(result("refused on purpose")["ok"], false);
    assert_eq!(
        result("chat with images")["parts"],
        json!(["text", "image_url", "image_url"])
    );
    assert_eq!(
        result("session turn 3 (history with replies)")["roles"],
        json!(["system", "user", "assistant", "user", "assistant", "user"])
    );
    assert_eq!(
        result("session turn 3 (history with replies)")["parts"],
        json!(["text", "image_url"]),
        "the second turn's image stays in the history"
    );
    assert_eq!(result("two-pass first pass")["max_tokens"], 1);
    assert_eq!(result("two-pass first pass")["stream"], false);
}
