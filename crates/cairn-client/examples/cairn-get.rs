//! Reads an object through the client and writes it to stdout: `cairn-get BUCKET KEY`
//! (endpoint and credentials from CAIRN_ENDPOINT, CAIRN_ACCESS_KEY, CAIRN_SECRET_KEY, CAIRN_ROUTE).

use std::io::Write;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(bucket), Some(key)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: cairn-get BUCKET KEY");
        std::process::exit(2);
    };
    let run = async {
        let c = cairn_client::Client::connect(cairn_client::Config::from_env()?).await?;
        let mut r = c.open(bucket, key).await?;
        let mut out = std::io::stdout().lock();
        loop {
            let b = r.read_bytes(usize::MAX).await?;
            if b.is_empty() {
                break;
            }
            out.write_all(&b).map_err(|e| cairn_client::Error::Invalid(e.to_string()))?;
        }
        eprintln!("{} bytes, {} members routed to directly", r.position(), c.direct_members());
        Ok::<_, cairn_client::Error>(())
    };
    if let Err(e) = run.await {
        eprintln!("cairn-get: {e}");
        std::process::exit(1);
    }
}
