//! The native half of `tox -e bench-core`: the same operations as
//! `bench/bench_mls.py`, on the same engine, without Python. Prints one JSON
//! object per group size on stdout (microseconds).
//!
//! cargo run --release --no-default-features --example native_bench -- 2 10 100 1000

use std::time::Instant;

use qpq_core_mls::client::{Client, Processed};
use qpq_core_mls::identity::Identity;

const WARMUP: usize = 50;

fn client() -> Client {
    Client::new(Identity::generate().expect("randomness"), Vec::new())
}

fn key_package(c: &mut Client) -> Vec<u8> {
    c.create_key_packages(1, 3600, false, qpq_core_mls::suite::DEFAULT)
        .expect("key package")
        .0
        .remove(0)
}

fn micros(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e6
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn bench(size: usize, reps: usize, messages: usize) -> String {
    let mut creator = client();
    let mut observer = client();
    let gid = creator
        .create_group(None, qpq_core_mls::suite::DEFAULT)
        .expect("group")
        .0
        .group_id;
    let mut kps = vec![key_package(&mut observer)];
    for _ in 2..size {
        kps.push(key_package(&mut client()));
    }
    let start = Instant::now();
    let (bundle, _) = creator.add_members(&gid, &kps).expect("add");
    creator.merge_pending_commit(&gid).expect("merge");
    let build = micros(start);
    observer
        .join_from_welcome(bundle.welcome.as_deref().expect("welcome"))
        .expect("join");

    let (mut add, mut process, mut join) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..reps {
        let mut newcomer = client();
        let kp = key_package(&mut newcomer);
        let start = Instant::now();
        let (bundle, _) = creator.add_members(&gid, &[kp]).expect("add one");
        add.push(micros(start));
        creator.merge_pending_commit(&gid).expect("merge");
        let start = Instant::now();
        let (out, _) = observer.process(&bundle.commit).expect("process commit");
        process.push(micros(start));
        assert!(matches!(out, Processed::Commit(_)));
        let start = Instant::now();
        newcomer
            .join_from_welcome(bundle.welcome.as_deref().expect("welcome"))
            .expect("join one");
        join.push(micros(start));
    }

    // Warm up caches and allocator before the per-message timings.
    for _ in 0..WARMUP {
        let (ct, _) = creator.encrypt(&gid, b"warm-up").expect("encrypt");
        observer.process(&ct).expect("decrypt");
    }
    let mut ciphertexts = Vec::with_capacity(messages);
    let start = Instant::now();
    for i in 0..messages {
        let text = format!("message {i} of the benchmark, about a line of chat");
        ciphertexts.push(creator.encrypt(&gid, text.as_bytes()).expect("encrypt").0);
    }
    let encrypt = micros(start) / messages as f64;
    let start = Instant::now();
    for ct in &ciphertexts {
        observer.process(ct).expect("decrypt");
    }
    let decrypt = micros(start) / messages as f64;
    format!(
        "{{\"size\": {size}, \"build\": {build:.1}, \"add\": {:.1}, \"process_commit\": {:.1}, \
         \"join\": {:.1}, \"encrypt\": {encrypt:.2}, \"decrypt\": {decrypt:.2}}}",
        median(add),
        median(process),
        median(join)
    )
}

fn main() {
    let mut sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    if sizes.is_empty() {
        sizes = vec![2, 10, 100, 1000];
    }
    for size in sizes {
        let reps = if size >= 1000 { 3 } else { 5 };
        let messages = if size >= 1000 { 200 } else { 500 };
        println!("{}", bench(size.max(2), reps, messages));
    }
}
