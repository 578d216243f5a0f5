//! Bytes the span store holds per vLLM request span (the span of one request
//! of a run), measured with a counting allocator: requested bytes, so the
//! allocator's own few bytes per block come on top.
//!
//! Measured with this test: the store that kept every parsed `Span` held 3281
//! bytes in 23 blocks per span (more with a run's live phase means); the
//! compact store holds 885 bytes in 4 blocks, with or without live means, 554
//! of them the span's attributes as JSON text (the record's server view
//! repeats them in full, so they are kept).

mod trace_support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use tracebench::client::traceparent::TraceId;
use tracebench::testing::fixture_bytes;
use tracebench::trace::span::{decode_protobuf, spans_of, Span};
use tracebench::trace::store::SpanStore;

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static LIVE_BLOCKS: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        LIVE_BLOCKS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        LIVE_BLOCKS.fetch_sub(1, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const SPANS: usize = 20_000;

/// The first vLLM request span of the capture, as request `i` of a run.
fn span(template: &Span, i: usize) -> Span {
    let mut span = template.clone();
    let mut id = template.trace_id.to_bytes();
    id[..8].copy_from_slice(&(i as u64).to_le_bytes());
    span.trace_id = TraceId::from(id);
    span.attributes.insert(
        "gen_ai.request.id".into(),
        format!("chatcmpl-{i:016x}").into(),
    );
    span
}

/// Bytes and blocks per span held by a store filled with `SPANS` spans.
fn held_per_span(mut store: SpanStore, template: &Span) -> (f64, f64) {
    let before = (
        LIVE_BYTES.load(Ordering::Relaxed),
        LIVE_BLOCKS.load(Ordering::Relaxed),
    );
    for i in 0..SPANS {
        store.insert(span(template, i));
        if i % 1000 == 0 {
            store.live_phases();
        }
    }
    store.live_phases();
    let bytes = (LIVE_BYTES.load(Ordering::Relaxed) - before.0) as f64 / SPANS as f64;
    let blocks = (LIVE_BLOCKS.load(Ordering::Relaxed) - before.1) as f64 / SPANS as f64;
    assert_eq!(store.span_count(), SPANS as u64);
    drop(store);
    (bytes, blocks)
}

// One test only: another test's allocations would be counted too.
#[test]
fn a_vllm_request_span_costs_under_a_kilobyte() {
    let request = decode_protobuf(&fixture_bytes("vllm/concurrent-12.spans.pb")).unwrap();
    let template = spans_of(&request.resource_spans).unwrap().remove(0);
    let json = serde_json::to_string(&span(&template, 0).attributes).unwrap();
    for (name, store) in [
        ("join", SpanStore::new()),
        ("run (live means)", SpanStore::with_live_phases()),
    ] {
        let (bytes, blocks) = held_per_span(store, &template);
        eprintln!(
            "span store for a {name}: {bytes:.0} bytes in {blocks:.1} blocks per vLLM request span \
             (its attributes are {} bytes of JSON)",
            json.len()
        );
        assert!(bytes < 1024.0, "{name}: {bytes:.0} bytes per span");
        assert!(blocks <= 5.0, "{name}: {blocks:.1} blocks per span");
    }
}
