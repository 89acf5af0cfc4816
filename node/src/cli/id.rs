//! `ferry id new` and `ferry id show`.

use std::path::PathBuf;

use clap::Subcommand;
use ferry_client::Identity;

use super::out;

#[derive(Subcommand, Debug)]
pub(crate) enum IdCommand {
    /// Create a new identity (Ed25519 + X25519/ML-KEM-768 keys), mode 0600.
    New {
        /// Where to write it [default: $XDG_CONFIG_HOME/ferry/identity.json].
        #[arg(long, env = "FERRY_ID")]
        out: Option<PathBuf>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show an identity's public key and fingerprint.
    Show {
        /// The identity file [default: $XDG_CONFIG_HOME/ferry/identity.json].
        #[arg(long = "id", env = "FERRY_ID")]
        id: Option<PathBuf>,
        /// Print `{"public_key": hex, "fingerprint": "SHA256:..."}`.
        #[arg(long)]
        json: bool,
    },
}

fn print(id: &Identity, path: &std::path::Path, json: bool) -> anyhow::Result<()> {
    if json {
        out(&serde_json::json!({
            "public_key": id.public_key().to_hex(),
            "fingerprint": id.fingerprint().to_string(),
            "file": path.display().to_string(),
        })
        .to_string())?;
    } else {
        out(&format!("public key:  {}", id.public_key()))?;
        out(&format!("fingerprint: {}", id.fingerprint()))?;
        out(&format!("file:        {}", path.display()))?;
    }
    Ok(())
}

pub(crate) fn run(cmd: IdCommand) -> anyhow::Result<()> {
    match cmd {
        IdCommand::New { out: path, json } => {
            let path = crate::identity_path(path);
            let id = Identity::generate()?;
            id.save(&path)?;
            print(&id, &path, json)?;
        }
        IdCommand::Show { id, json } => {
            let path = crate::identity_path(id);
            let id = super::load_identity(&path)?;
            print(&id, &path, json)?;
        }
    }
    Ok(())
}
