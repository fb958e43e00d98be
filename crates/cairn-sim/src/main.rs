//! `cairn-sim`: simulations and benchmarks of cairn's pure logic at cluster scale, in one process.
//!
//! ```text
//! cargo run --release -p cairn-sim -- placement [--sizes 1000,10000,100000] [--lookups 500000]
//!                                               [--weights equal|mixed]
//! cargo run --release -p cairn-sim -- membership [--sizes 1000,10000,100000] [--cell-size 1000]
//!                                                [--form snapshot|preformed] [--latency-us 500]
//!                                                [--jitter-us 200] [--loss 0.0] [--spread 5]
//!                                                [--steady 30] [--crash 3] [--loss-test 0.01]
//!                                                [--loss-secs 60] [--budget 240] [--seed 1]
//!                                                [--only 2,3,4,5,6]
//! cargo run --release -p cairn-sim -- fanout [--sizes 100,1000,10000] [--object 16GiB] [--chunk 8MiB]
//!                                            [--window 8] [--upload-slots 16] [--link-gbit 200]
//!                                            [--origin-gbit 100] [--origin-ms 30] [--latency-us 50]
//!                                            [--schemes b,p] [--seed 1] [--direct-budget 1]
//!                                            [--max-children 2] [--holders-per-answer 3]
//!                                            [--holders-per-chunk 1024] [--holder-ttl-ms 30000]
//! ```
//!
//! `fanout` has N nodes read one object at once and compares every node reading the origin
//! (analytic), owner-only serving, peer-to-peer fan-out driven by the real
//! `cairn_core::fanout::Tracker`, and the ideal: time until all hold all, egress per node, origin
//! bytes (a discrete-event, flow-level network model; see `fanout.rs`). The `--direct-budget` ..
//! `--holder-ttl-ms` flags set the tracker's `FanoutConfig` (defaults: the node's).
//!
//! `membership` drives the real `cairn_membership::Membership` (SWIM within cells of
//! `--cell-size` nodes, 0 = one flat cell; the cluster-wide table by rumor and anti-entropy) over a
//! simulated network (latency, jitter, loss, stalls): forming, steady-state traffic, crash
//! detection, false positives under loss and stalls, a rack of 40 dying, 1,000 joins at once,
//! memory per node. `--form preformed` starts every node with the full table (a formed cluster)
//! instead of each taking a seed's snapshot as it starts.
//! `--budget` is the wall-clock seconds a convergence phase may take before it is reported as not
//! converged; `--only` runs some of scenarios 2–6 (forming always runs).

mod fanout;
mod membership;
mod placement;
mod reference;

use std::process::ExitCode;

// jemalloc, as in the `cairn` binary: the membership simulation makes and frees hundreds of
// millions of small blocks (copied-on-write buckets, packets) of many sizes; glibc's malloc
// spent a fifth of the 100,000-node join in its free lists and fragmented the heap.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("placement") => placement::Options::parse(&args[1..]).map(|o| placement::run(&o)),
        Some("membership") => membership::Options::parse(&args[1..]).map(|o| membership::run(&o)),
        Some("fanout") => fanout::Options::parse(&args[1..]).map(|o| fanout::run(&o)),
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairn-sim: {e}");
            ExitCode::from(2)
        }
    }
}

const USAGE: &str = "usage: cairn-sim placement [--sizes 1000,10000,100000] [--lookups N] [--weights equal|mixed]
       cairn-sim membership [--sizes 1000,10000,100000] [--cell-size N] [--form snapshot|preformed]
                            [--latency-us N] [--jitter-us N] [--loss P] [--spread S] [--steady S] [--crash K]
                            [--loss-test P] [--loss-secs S] [--budget S] [--seed N] [--only 2,3,4,5,6]
       cairn-sim fanout [--sizes 100,1000,10000] [--object 16GiB] [--chunk 8MiB] [--window N]
                        [--upload-slots N] [--link-gbit G] [--origin-gbit G] [--origin-ms MS] [--latency-us US]
                        [--schemes b,p] [--seed N] [--direct-budget N] [--max-children N]
                        [--holders-per-answer N] [--holders-per-chunk N] [--holder-ttl-ms MS]";
