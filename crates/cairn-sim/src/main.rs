//! `cairn-sim`: simulations and benchmarks of cairn's pure logic at cluster scale, in one process.
//!
//! ```text
//! cargo run --release -p cairn-sim -- placement [--sizes 1000,10000,100000] [--lookups 500000]
//!                                               [--weights equal|mixed]
//! ```

mod placement;
mod reference;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("placement") => placement::Options::parse(&args[1..]).map(|o| placement::run(&o)),
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

const USAGE: &str = "usage: cairn-sim placement [--sizes 1000,10000,100000] [--lookups N] [--weights equal|mixed]";
