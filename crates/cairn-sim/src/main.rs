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
//! ```
//!
//! `membership` drives the real `cairn_membership::Membership` (SWIM within cells of
//! `--cell-size` nodes, 0 = one flat cell; the cluster-wide table by rumor and anti-entropy) over a
//! simulated network (latency, jitter, loss, stalls): forming, steady-state traffic, crash
//! detection, false positives under loss and stalls, a rack of 40 dying, 1,000 joins at once,
//! memory per node. `--form preformed` starts every node with the full table (a formed cluster)
//! instead of each taking a seed's snapshot as it starts.
//! `--budget` is the wall-clock seconds a convergence phase may take before it is reported as not
//! converged.

mod membership;
mod placement;
mod reference;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("placement") => placement::Options::parse(&args[1..]).map(|o| placement::run(&o)),
        Some("membership") => membership::Options::parse(&args[1..]).map(|o| membership::run(&o)),
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
                            [--loss-test P] [--loss-secs S] [--budget S] [--seed N]";
