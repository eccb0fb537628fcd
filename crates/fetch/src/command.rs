//! `fetch-bundle`: the subcommand the edge agent and the cloud worker both offer, so the init
//! container runs the pod's own image and nothing else.

use std::path::PathBuf;
use std::process::ExitCode;

use collm_bundle::Parts;

use crate::source::{self, BundleDownload, BundleUrl, DEFAULT_MAX_BYTES, Sha256Hex};
use crate::{FetchError, FetchOptions, Fetched, fetch};

/// Download, verify and unpack a bundle archive (what a pod's init container runs).
#[derive(clap::Args, Debug, Clone)]
pub struct FetchArgs {
    /// The runtime configuration (`edge.json` or `cloud.json`): its bundle section names the
    /// URL, the SHA-256 and the directory.
    #[arg(long, conflicts_with_all = ["url", "sha256", "dir"])]
    pub config: Option<PathBuf>,
    /// Archive URL (http:// or https://), instead of --config.
    #[arg(long, requires_all = ["sha256", "dir"])]
    pub url: Option<String>,
    /// Expected SHA-256 of the archive (64 hex digits).
    #[arg(long)]
    pub sha256: Option<String>,
    /// Bundle directory to create.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Refuse archives larger than this many bytes [default: the config's, else 8 GiB].
    #[arg(long)]
    pub max_bytes: Option<u64>,
    /// Download attempts before giving up.
    #[arg(long, default_value_t = 5)]
    pub attempts: u32,
    /// Also write a failure's message to this file (Kubernetes shows /dev/termination-log in
    /// the pod's status, where the operator reads it).
    #[arg(long)]
    pub termination_log: Option<PathBuf>,
}

/// Runs the subcommand for a process that needs `parts` of the bundle.
pub fn run(args: FetchArgs, parts: Parts) -> ExitCode {
    match plan(&args).and_then(|download| match download {
        None => {
            println!("fetch-bundle: the configuration names no bundle URL; nothing to fetch");
            Ok(None)
        }
        Some(download) => {
            let options = FetchOptions {
                backoff: crate::Backoff { attempts: args.attempts.max(1), ..Default::default() },
                ..FetchOptions::default()
            };
            fetch(&download, parts, options, &mut |line| println!("fetch-bundle: {line}")).map(Some)
        }
    }) {
        Ok(Some(Fetched::Downloaded { bytes, attempts, resumed })) => {
            println!(
                "fetch-bundle: done: {bytes} bytes in {attempts} attempt(s){}",
                if resumed { ", resumed" } else { "" }
            );
            ExitCode::SUCCESS
        }
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            let message = e.to_string();
            eprintln!("error: {message}");
            if let Some(path) = &args.termination_log
                && let Err(write) = std::fs::write(path, &message)
            {
                eprintln!("fetch-bundle: cannot write {}: {write}", path.display());
            }
            ExitCode::FAILURE
        }
    }
}

fn plan(args: &FetchArgs) -> Result<Option<BundleDownload>, FetchError> {
    let mut download = match (&args.config, &args.url, &args.sha256, &args.dir) {
        (Some(config), ..) => source::from_config_file(config)?,
        (None, Some(url), Some(sha256), Some(dir)) => Some(BundleDownload {
            url: BundleUrl::parse(url)?,
            sha256: Sha256Hex::parse(sha256)?,
            max_bytes: DEFAULT_MAX_BYTES,
            dir: dir.clone(),
        }),
        _ => {
            return Err(FetchError::Config(
                "give --config FILE, or --url, --sha256 and --dir".into(),
            ));
        }
    };
    if let (Some(d), Some(max)) = (download.as_mut(), args.max_bytes) {
        d.max_bytes = max;
    }
    Ok(download)
}
