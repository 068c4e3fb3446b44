//! `picketctl`: `main` → `run` → exit code. 0 ok, 1 runtime failure, 2 bad
//! usage or configuration (clap's own errors exit 2 too); a broken pipe
//! (`picketctl ... | head`) is success.

use std::process::ExitCode;

use clap::Parser;
use picketctl::BadConfig;
use picketctl::args::Cli;

fn main() -> ExitCode {
    picket_tls::install_provider();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("picketctl: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(picketctl::cmd::dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return ExitCode::SUCCESS;
            }
            if let Some(f) = e.downcast_ref::<picketctl::Failed>() {
                if !f.0.is_empty() {
                    eprintln!("picketctl: {}", f.0);
                }
                return ExitCode::FAILURE;
            }
            eprintln!("picketctl: {e:#}");
            if e.downcast_ref::<BadConfig>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
