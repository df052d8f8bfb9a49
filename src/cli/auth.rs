//! `palyra auth add | list | show | login | token | revoke | remove`: auth profiles (API keys
//! and OAuth 2.0 with PKCE) kept by the node.
//!
//! `login` starts the authorization on the node, prints the URL to open, and waits for the
//! provider's redirect on a loopback listener (`http://127.0.0.1:<port>/callback`) or for the
//! redirect URL (or the bare code) pasted on standard input, whichever comes first.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use super::client::connect;
use super::output::{CliError, Context, time};
use crate::wire::pb::auth::v1::{self as pb, auth_profile_service_client::AuthProfileServiceClient};

/// How long `login` waits for the redirect (the node forgets the state after 10 minutes).
const LOGIN_WAIT: Duration = Duration::from_secs(10 * 60);

#[derive(Debug, Subcommand)]
pub(super) enum AuthCommand {
    /// Add a profile: an API key (from stdin or a file, never argv) or OAuth 2.0 settings.
    #[command(
        after_help = "Example:\n  printf %s \"$OPENAI_API_KEY\" | palyra auth add openai --provider openai --api-key-stdin"
    )]
    Add(AddArgs),
    /// List profiles (never keys or tokens).
    #[command(after_help = "Example:\n  palyra auth list --json")]
    List,
    /// Show one profile (never its key or tokens).
    #[command(after_help = "Example:\n  palyra auth show openai")]
    Show {
        /// The profile's name.
        name: String,
    },
    /// Authorize an OAuth 2.0 profile: prints the URL to open, then waits for the redirect on
    /// a 127.0.0.1 listener or for the redirect URL (or code) pasted on standard input.
    #[command(after_help = "Example:\n  palyra auth login github")]
    Login(LoginArgs),
    /// Print a usable token (the API key, or a fresh access token).
    #[command(after_help = "Example:\n  palyra auth token github")]
    Token {
        /// The profile's name.
        name: String,
    },
    /// Forget a profile's key or tokens (the profile stays; log in again to use it).
    #[command(after_help = "Example:\n  palyra auth revoke github")]
    Revoke {
        /// The profile's name.
        name: String,
    },
    /// Delete a profile and destroy its key or tokens.
    #[command(after_help = "Example:\n  palyra auth remove github")]
    Remove {
        /// The profile's name.
        name: String,
    },
}

#[derive(Debug, Args)]
pub(super) struct AddArgs {
    /// The profile's name (a-z 0-9 . _ -).
    name: String,
    /// The provider, free text (e.g. openai, anthropic).
    #[arg(long)]
    provider: String,
    /// API key profile: read the key from standard input (surrounding whitespace trimmed).
    #[arg(long, conflicts_with_all = ["api_key_file", "oauth2"])]
    api_key_stdin: bool,
    /// API key profile: read the key from a file (surrounding whitespace trimmed).
    #[arg(long, value_name = "FILE", conflicts_with = "oauth2")]
    api_key_file: Option<PathBuf>,
    /// OAuth 2.0 profile (authorization code + PKCE): needs --client-id, --authorize-url, --token-url.
    #[arg(long, requires_all = ["client_id", "authorize_url", "token_url"])]
    oauth2: bool,
    /// OAuth 2.0 client id.
    #[arg(long)]
    client_id: Option<String>,
    /// OAuth 2.0 authorization endpoint.
    #[arg(long, value_name = "URL")]
    authorize_url: Option<String>,
    /// OAuth 2.0 token endpoint.
    #[arg(long, value_name = "URL")]
    token_url: Option<String>,
    /// A scope to request (repeatable).
    #[arg(long = "scope", value_name = "SCOPE")]
    scopes: Vec<String>,
    /// The redirect URI registered with the provider (default: the loopback listener of `login`).
    #[arg(long, value_name = "URL")]
    redirect_uri: Option<String>,
}

#[derive(Debug, Args)]
pub(super) struct LoginArgs {
    /// The profile's name.
    name: String,
    /// Port of the loopback redirect listener on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// No listener: use the profile's registered redirect URI and wait for pasted input only.
    #[arg(long)]
    paste: bool,
}

#[derive(Debug, Serialize)]
struct ProfileOut {
    name: String,
    provider: String,
    kind: &'static str,
    status: &'static str,
    client_id: Option<String>,
    token_url: Option<String>,
    scopes: Vec<String>,
    created_at: String,
    updated_at: String,
    access_token_expires_at: Option<String>,
    last_error: String,
}

impl From<pb::AuthProfile> for ProfileOut {
    fn from(p: pb::AuthProfile) -> Self {
        let kind = match p.kind() {
            pb::AuthProfileKind::ApiKey => "api_key",
            pb::AuthProfileKind::Oauth2 => "oauth2",
            pb::AuthProfileKind::Unspecified => "unspecified",
        };
        let status = match p.status() {
            pb::AuthProfileStatus::Ready => "ready",
            pb::AuthProfileStatus::NeedsAuthorization => "needs_authorization",
            pb::AuthProfileStatus::NeedsReauthorization => "needs_reauthorization",
            pb::AuthProfileStatus::Unspecified => "unspecified",
        };
        ProfileOut {
            created_at: time(p.created_at.as_ref()),
            updated_at: time(p.updated_at.as_ref()),
            access_token_expires_at: p.access_token_expires_at.as_ref().map(|t| time(Some(t))),
            client_id: p.oauth2.as_ref().map(|o| o.client_id.clone()),
            token_url: p.oauth2.as_ref().map(|o| o.token_url.clone()),
            scopes: p.oauth2.map(|o| o.scopes).unwrap_or_default(),
            name: p.name,
            provider: p.provider,
            kind,
            status,
            last_error: p.last_error,
        }
    }
}

impl ProfileOut {
    fn line(&self) -> String {
        let mut line = format!("{}  {}  {}  {}", self.name, self.provider, self.kind, self.status);
        if let Some(at) = &self.access_token_expires_at {
            line.push_str(&format!("  token expires {at}"));
        }
        if !self.last_error.is_empty() {
            line.push_str(&format!("  last error: {}", self.last_error));
        }
        line
    }
}

pub(super) async fn run(ctx: &Context, cmd: AuthCommand) -> Result<(), CliError> {
    let mut client = AuthProfileServiceClient::new(connect(ctx).await?);
    match cmd {
        AuthCommand::Add(args) => add(ctx, &mut client, args).await,
        AuthCommand::List => {
            let profiles = client.list_profiles(pb::ListProfilesRequest {}).await?.into_inner().profiles;
            let out: Vec<ProfileOut> = profiles.into_iter().map(Into::into).collect();
            ctx.print(&out, || {
                if out.is_empty() {
                    "no auth profiles".to_owned()
                } else {
                    out.iter().map(ProfileOut::line).collect::<Vec<_>>().join("\n")
                }
            })
        }
        AuthCommand::Show { name } => {
            let profile = client.get_profile(pb::GetProfileRequest { name }).await?.into_inner().profile;
            let out = ProfileOut::from(profile.unwrap_or_default());
            ctx.print(&out, || out.line())
        }
        AuthCommand::Login(args) => login(ctx, &mut client, args).await,
        AuthCommand::Token { name } => {
            let response = client.get_access_token(pb::GetAccessTokenRequest { name }).await?.into_inner();
            let token = Zeroizing::new(response.access_token);
            #[derive(Serialize)]
            struct Out<'a> {
                access_token: &'a str,
                token_type: &'a str,
                expires_at: Option<String>,
            }
            let out = Out {
                access_token: &token,
                token_type: &response.token_type,
                expires_at: response.expires_at.as_ref().map(|t| time(Some(t))),
            };
            ctx.print(&out, || token.to_string())
        }
        AuthCommand::Revoke { name } => {
            let profile =
                client.revoke_profile(pb::RevokeProfileRequest { name }).await?.into_inner().profile;
            let out = ProfileOut::from(profile.unwrap_or_default());
            ctx.print(&out, || format!("revoked {}", out.line()))
        }
        AuthCommand::Remove { name } => {
            client.delete_profile(pb::DeleteProfileRequest { name: name.clone() }).await?;
            #[derive(Serialize)]
            struct Out {
                removed: String,
            }
            ctx.print(&Out { removed: name.clone() }, || format!("removed auth profile {name}"))
        }
    }
}

async fn add(
    ctx: &Context,
    client: &mut AuthProfileServiceClient<tonic::transport::Channel>,
    args: AddArgs,
) -> Result<(), CliError> {
    let request = if args.oauth2 {
        pb::CreateProfileRequest {
            name: args.name,
            provider: args.provider,
            kind: pb::AuthProfileKind::Oauth2 as i32,
            api_key: Vec::new(),
            oauth2: Some(pb::OAuth2Config {
                client_id: args.client_id.unwrap_or_default(),
                authorize_url: args.authorize_url.unwrap_or_default(),
                token_url: args.token_url.unwrap_or_default(),
                scopes: args.scopes,
                redirect_uri: args.redirect_uri.unwrap_or_default(),
            }),
        }
    } else {
        let mut raw = Zeroizing::new(Vec::new());
        if args.api_key_stdin {
            std::io::stdin()
                .read_to_end(&mut raw)
                .map_err(|e| CliError::new(format!("reading stdin: {e}")))?;
        } else if let Some(path) = &args.api_key_file {
            *raw =
                std::fs::read(path).map_err(|e| CliError::new(format!("reading {}: {e}", path.display())))?;
        } else {
            return Err(CliError::new(
                "give the key with --api-key-stdin or --api-key-file, or use --oauth2",
            )
            .hint("e.g. printf %s \"$KEY\" | palyra auth add NAME --provider openai --api-key-stdin"));
        }
        let trimmed = raw.trim_ascii().to_vec();
        pb::CreateProfileRequest {
            name: args.name,
            provider: args.provider,
            kind: pb::AuthProfileKind::ApiKey as i32,
            api_key: trimmed,
            oauth2: None,
        }
    };
    let oauth = request.oauth2.is_some();
    let profile = client.create_profile(request).await?.into_inner().profile;
    let out = ProfileOut::from(profile.unwrap_or_default());
    ctx.print(&out, || {
        let mut text = format!("added {}", out.line());
        if oauth {
            text.push_str(&format!("\nnext: palyra auth login {}", out.name));
        }
        text
    })
}

/// What the redirect (or the pasted text) carried.
#[derive(Debug)]
struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

impl Callback {
    /// From a redirect URL, a query string, or a bare code.
    fn parse(text: &str) -> Callback {
        let text = text.trim();
        let query = if let Ok(url) = url::Url::parse(text) {
            url.query().map(str::to_owned)
        } else if text.contains("code=") || text.contains("error=") {
            Some(text.trim_start_matches('?').to_owned())
        } else {
            return Callback { code: Some(text.to_owned()), state: None, error: None };
        };
        let pairs: HashMap<String, String> = query
            .and_then(|q| url::Url::parse(&format!("http://x/?{q}")).ok())
            .map(|u| u.query_pairs().into_owned().collect())
            .unwrap_or_default();
        Callback {
            code: pairs.get("code").cloned(),
            state: pairs.get("state").cloned(),
            error: pairs.get("error").map(|e| match pairs.get("error_description") {
                Some(d) => format!("{e}: {d}"),
                None => e.clone(),
            }),
        }
    }
}

async fn login(
    ctx: &Context,
    client: &mut AuthProfileServiceClient<tonic::transport::Channel>,
    args: LoginArgs,
) -> Result<(), CliError> {
    let (sender, mut callbacks) = mpsc::channel::<Callback>(4);
    let mut redirect_uri = String::new();
    if !args.paste {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port))
            .await
            .map_err(|e| CliError::new(format!("cannot listen on 127.0.0.1:{}: {e}", args.port)))?;
        let port = listener.local_addr().map_err(|e| CliError::new(e.to_string()))?.port();
        redirect_uri = format!("http://127.0.0.1:{port}/callback");
        tokio::spawn(serve_callbacks(listener, sender.clone()));
    }
    let started = client
        .start_authorization(pb::StartAuthorizationRequest { name: args.name.clone(), redirect_uri })
        .await?
        .into_inner();
    // The prompt goes to stderr so that `--json` output stays one JSON document; a closed
    // stderr is no reason to give up the login.
    let next = if args.paste {
        "then paste the URL you are redirected to (or just the code) here:"
    } else {
        "waiting for the redirect (or paste the redirect URL or the code here)..."
    };
    let _ = writeln!(
        std::io::stderr(),
        "open this URL in a browser and approve the access:\n\n  {}\n\n{next}",
        started.authorize_url
    );
    std::thread::spawn(move || {
        let mut line = String::new();
        if std::io::stdin().read_line(&mut line).is_ok() && !line.trim().is_empty() {
            let _ = sender.blocking_send(Callback::parse(&line));
        }
    });
    let callback = tokio::time::timeout(LOGIN_WAIT, callbacks.recv())
        .await
        .map_err(|_| {
            CliError::new("no redirect came within 10 minutes").hint("run `palyra auth login` again")
        })?
        .ok_or_else(|| CliError::new("no code was given"))?;
    if let Some(error) = callback.error {
        return Err(CliError::new(format!("the provider refused the authorization: {error}")));
    }
    if callback.state.as_deref().is_some_and(|s| s != started.state) {
        return Err(CliError::new("the redirect carries another authorization's state")
            .hint("run `palyra auth login` again and use the newest URL"));
    }
    let code = callback.code.ok_or_else(|| CliError::new("the redirect carries no code"))?;
    let profile = client
        .complete_authorization(pb::CompleteAuthorizationRequest { state: started.state, code })
        .await?
        .into_inner()
        .profile;
    let out = ProfileOut::from(profile.unwrap_or_default());
    ctx.print(&out, || format!("authorized {}", out.line()))
}

/// Serves the loopback redirect: `GET /callback?code=…&state=…` (or `?error=…`).
async fn serve_callbacks(listener: tokio::net::TcpListener, sender: mpsc::Sender<Callback>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { return };
        let sender = sender.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let sender = sender.clone();
                async move {
                    let found = req.uri().path() == "/callback";
                    let (status, body) = if found {
                        let callback = Callback::parse(&format!("?{}", req.uri().query().unwrap_or("")));
                        let failed = callback.error.is_some() || callback.code.is_none();
                        let _ = sender.send(callback).await;
                        if failed {
                            (200, "Authorization failed; see the terminal.")
                        } else {
                            (200, "Authorized. You can close this window and return to the terminal.")
                        }
                    } else {
                        (404, "Not found.")
                    };
                    let response = hyper::Response::builder()
                        .status(status)
                        .header("content-type", "text/plain; charset=utf-8")
                        .body(Full::new(Bytes::from_static(body.as_bytes())))
                        .unwrap_or_default();
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callbacks_parse_from_urls_queries_and_bare_codes() {
        let c = Callback::parse("http://127.0.0.1:5/callback?code=abc&state=xyz\n");
        assert_eq!((c.code.as_deref(), c.state.as_deref()), (Some("abc"), Some("xyz")));
        let c = Callback::parse("?code=a%2Fb&state=s");
        assert_eq!(c.code.as_deref(), Some("a/b"));
        let c = Callback::parse("  just-a-code ");
        assert_eq!((c.code.as_deref(), c.state), (Some("just-a-code"), None));
        let c = Callback::parse("https://app/cb?error=access_denied&error_description=no");
        assert_eq!(c.error.as_deref(), Some("access_denied: no"));
    }
}
