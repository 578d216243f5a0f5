//! SSE framing throughput on real vLLM streams, fed one event per read as a
//! server writes them (the client's hot path): `cargo bench --bench sse_framing`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::ops::ControlFlow;
use tracebench::client::sse::SseFramer;

/// A fixture's body cut into the reads a client gets: one event each.
fn reads_of(name: &str) -> Vec<Vec<u8>> {
    let body = tracebench::testing::fixture_bytes(&format!("vllm/{name}"));
    let mut reads = Vec::new();
    let mut read = Vec::new();
    for line in body.split_inclusive(|b| *b == b'\n') {
        read.extend_from_slice(line);
        if line == b"\n" {
            reads.push(std::mem::take(&mut read));
        }
    }
    reads
}

fn framing(c: &mut Criterion) {
    let mut group = c.benchmark_group("sse_framing");
    for name in ["chat-stream.sse", "chat-stream-continuous-usage.sse"] {
        let reads = reads_of(name);
        let bytes: usize = reads.iter().map(Vec::len).sum();
        group.throughput(Throughput::Bytes(bytes as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), &reads, |b, reads| {
            let mut framer = SseFramer::default();
            b.iter(|| {
                let mut data_bytes = 0;
                for read in reads {
                    framer
                        .feed::<()>(black_box(read), |event| {
                            data_bytes += event.data.len();
                            ControlFlow::Continue(())
                        })
                        .expect("real streams frame");
                }
                data_bytes
            });
        });
    }
    group.finish();
}

criterion_group!(benches, framing);
criterion_main!(benches);
