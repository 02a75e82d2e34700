//! `synapse-sfu token`: mint an access token.

use std::time::Duration;

use anyhow::Result;
use synapse_sfu::auth::AccessPolicy;
use synapse_sfu::wire::{Grants, MediaKind, TrackSource};

#[derive(clap::Args)]
pub(crate) struct ApiKeyArgs {
    /// API key: the issuer of access tokens. With a secret, joins require tokens.
    #[arg(long, env = "SYNAPSE_API_KEY")]
    api_key: Option<String>,
    /// API secret that signs access tokens (HS256).
    #[arg(long, env = "SYNAPSE_API_SECRET", hide_env_values = true)]
    api_secret: Option<String>,
}

impl ApiKeyArgs {
    fn policy(&self) -> Result<AccessPolicy> {
        AccessPolicy::from_env_pair(self.api_key.clone(), self.api_secret.clone())
            .map_err(anyhow::Error::msg)
    }
}

#[derive(clap::Args)]
pub(crate) struct TokenArgs {
    /// The room the token admits to.
    #[arg(long, required_unless_present = "admin")]
    room: Option<String>,
    /// An admin-API token instead (no room, no media).
    #[arg(long, conflicts_with_all = ["room", "no_publish", "no_subscribe"])]
    admin: bool,
    /// The peer's identity (the token's subject).
    #[arg(long)]
    identity: String,
    /// Display name (default: the identity).
    #[arg(long)]
    name: Option<String>,
    /// How long the token is valid (e.g. 1h, 30m).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// The peer may not publish.
    #[arg(long)]
    no_publish: bool,
    /// The peer may not subscribe.
    #[arg(long)]
    no_subscribe: bool,
    /// Kinds the peer may publish (comma-separated: audio,video).
    #[arg(long, value_delimiter = ',', default_value = "audio,video")]
    kinds: Vec<String>,
    /// The peer may not send data messages (chat, lossy data).
    #[arg(long)]
    no_data: bool,
    /// Sources the peer may publish (comma-separated: camera,microphone,screen,screen_audio).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "camera,microphone,screen,screen_audio"
    )]
    sources: Vec<String>,
    #[command(flatten)]
    keys: ApiKeyArgs,
}

pub(crate) fn mint_token(args: TokenArgs) -> Result<()> {
    let AccessPolicy::Keys(key) = args.keys.policy()? else {
        anyhow::bail!("set --api-key and --api-secret (or SYNAPSE_API_KEY and SYNAPSE_API_SECRET)");
    };
    let kinds = args
        .kinds
        .iter()
        .map(|k| match k.trim() {
            "audio" => Ok(MediaKind::Audio),
            "video" => Ok(MediaKind::Video),
            other => anyhow::bail!("unknown kind {other:?} (audio, video)"),
        })
        .collect::<Result<Vec<_>>>()?;
    let sources = args
        .sources
        .iter()
        .map(|s| {
            TrackSource::ALL
                .into_iter()
                .find(|t| t.as_str() == s.trim())
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "unknown source {s:?} (camera, microphone, screen, screen_audio)"
                    )
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let grants = Grants {
        can_publish: !args.no_publish,
        can_subscribe: !args.no_subscribe,
        kinds,
        can_publish_data: !args.no_data,
        sources,
        relay: false,
    };
    let token = match &args.room {
        Some(room) if !args.admin => {
            key.mint(room, &args.identity, args.name.as_deref(), args.ttl, grants)?
        }
        _ => key.mint_admin(&args.identity, args.ttl)?,
    };
    println!("{token}");
    Ok(())
}
