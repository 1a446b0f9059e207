//! `gantry-toy-app dev=127.0.0.1:7101 staging=127.0.0.1:7102 ...`: one toy
//! app per environment, for the example pipeline.

use std::net::SocketAddr;

#[tokio::main]
async fn main() {
    let mut servers = Vec::new();
    for arg in std::env::args().skip(1) {
        let Some((env, addr)) = arg.split_once('=') else {
            eprintln!("error: `{arg}`: expected ENV=HOST:PORT, e.g. dev=127.0.0.1:7101");
            std::process::exit(2);
        };
        let addr: SocketAddr = match addr.parse() {
            Ok(a) => a,
            Err(e) => {
                eprintln!("error: `{arg}`: {e}");
                std::process::exit(2);
            }
        };
        match gantry_toy_app::spawn(addr).await {
            Ok((local, _)) => {
                println!("{env} http://{local}");
                servers.push(local);
            }
            Err(e) => {
                eprintln!("error: cannot listen on {addr} for {env}: {e}");
                std::process::exit(1);
            }
        }
    }
    if servers.is_empty() {
        eprintln!("usage: gantry-toy-app ENV=HOST:PORT...");
        std::process::exit(2);
    }
    let _ = tokio::signal::ctrl_c().await;
}
