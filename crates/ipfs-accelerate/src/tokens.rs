//! `ipfs-accelerate tokens create|list|revoke`: the tokens machines submit runs to the
//! results service with (`serve --db-path`). A token is shown once, when it is created; the
//! store keeps its SHA-256 and its first characters only.

use crate::results_store::token_hash;
use anyhow::{bail, Context};
use ia_db::Store;
use std::io::Read;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    store: crate::run_store::StoreArg,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Make a token and print it (once: only its hash is stored)
    Create {
        /// Who uses it (a runner, a person); unique among tokens not revoked
        #[arg(long)]
        name: String,
        /// submit (send runs and read) or read (read routes only)
        #[arg(long, default_value = "submit", value_parser = ["submit", "read"])]
        scope: String,
        /// Days until it stops working (default: never)
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=36_500))]
        expires_days: Option<u32>,
        /// Print the token as JSON with its id and name
        #[arg(long)]
        json: bool,
    },
    /// Every token: name, first characters, scope, state, last use, submissions
    List {
        #[arg(long)]
        json: bool,
    },
    /// Stop a token from working (by name or id)
    Revoke { name: String },
}

/// 32 random bytes from the operating system, hex, with a prefix that says what it is.
fn new_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading random bytes from /dev/urandom")?;
    Ok(format!("iat_{}", hex::encode(bytes)))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Create {
            name,
            scope,
            expires_days,
            json,
        } => {
            let name = name.trim().to_string();
            if name.is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
                bail!("--name must hold 1 to 100 printable characters");
            }
            let token = new_token()?;
            let mut store = Store::open_or_create(&args.store.db_path)?;
            let id = store.create_token(
                &name,
                &token_hash(&token),
                &token[..12],
                &scope,
                expires_days,
            )?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"id": id, "name": name, "scope": scope, "token": token})
                );
            } else {
                println!("{token}");
                eprintln!(
                    "token {id} '{name}' ({scope}{}): shown this once, store it now",
                    expires_days
                        .map(|d| format!(", expires in {d} days"))
                        .unwrap_or_default()
                );
            }
        }
        Command::List { json } => {
            let store = Store::open_existing(&args.store.db_path)?;
            let rows = store.list_tokens()?;
            if json {
                println!("{}", rows.json());
            } else if rows.rows.is_empty() {
                println!("no tokens (ipfs-accelerate tokens create --name NAME)");
            } else {
                print!("{}", rows.table());
            }
        }
        Command::Revoke { name } => {
            let mut store = Store::open_writable(&args.store.db_path)?;
            match store.revoke_token(name.trim())? {
                0 => bail!("no valid token named '{name}' (tokens list shows them)"),
                n => eprintln!("revoked {n} token(s) named '{name}'"),
            }
        }
    }
    Ok(())
}
