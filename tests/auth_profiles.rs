//! Auth profiles against a real OAuth 2.0 token endpoint: a small hyper server on 127.0.0.1
//! started by each test, which checks the PKCE verifier (S256), issues and rotates tokens,
//! and fails on demand. Covers API keys, full authorization, single-use states, refresh on
//! expiry, one refresh under 50 concurrent callers, a wrong verifier, a revoked refresh
//! token, a provider that fails or is down, and per-profile grants to a device.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use palyra::auth::pkce::base64url;
use palyra::identity::Role;
use palyra::testkit::{NodeInternals, TestNode, palyra_bin, reason};
use palyra::wire::pb::auth::v1 as pb;
use palyra::wire::pb::auth::v1::auth_profile_service_client::AuthProfileServiceClient;
use palyra::wire::pb::policy::v1 as policy;
use palyra::wire::pb::policy::v1::policy_service_client::PolicyServiceClient;
use palyra::wire::pb::vault::v1 as vault;
use palyra::wire::pb::vault::v1::vault_service_client::VaultServiceClient;
use tonic::Code;
use tonic::transport::Channel;

/// What the fake provider knows and how it behaves.
#[derive(Default)]
struct ProviderState {
    /// Authorization codes → (S256 challenge, redirect URI).
    codes: HashMap<String, (String, String)>,
    /// Refresh tokens that are still valid (each one is single use: rotated on refresh).
    refresh_tokens: HashSet<String>,
    /// Issued access tokens count (access-1, access-2, ...).
    issued: u64,
    /// Successful refreshes.
    refreshes: u64,
    /// Rejected code exchanges.
    rejected_exchanges: u64,
    /// `expires_in` of the next tokens.
    expires_in: u64,
    /// Answer every token request with this status.
    fail_with: Option<u16>,
    /// Delay of each refresh (to let concurrent callers pile up).
    refresh_delay: Duration,
}

#[derive(Clone)]
struct Provider {
    state: Arc<Mutex<ProviderState>>,
    addr: SocketAddr,
    server: Arc<tokio::task::JoinHandle<()>>,
}

impl Provider {
    async fn start() -> Provider {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(ProviderState { expires_in: 3600, ..Default::default() }));
        let shared = Arc::clone(&state);
        let server = tokio::spawn(async move {
            // Connections belong to the accept task: aborting it closes them all (the node's
            // HTTP client keeps connections alive).
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let state = Arc::clone(&shared);
                connections.spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req| token_endpoint(Arc::clone(&state), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Provider { state, addr, server: Arc::new(server) }
    }

    fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    fn with<T>(&self, f: impl FnOnce(&mut ProviderState) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// What the authorization endpoint does once the user consents: remembers the challenge
    /// and hands out a code (the browser leg, not exercised over HTTP here).
    fn authorize(&self, authorize_url: &str) -> (String, String) {
        let url = reqwest::Url::parse(authorize_url).unwrap();
        let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["client_id"], "palyra-test");
        assert_eq!(q["scope"], "models.read models.write");
        let code = format!("code-{}", q["state"]);
        self.with(|s| s.codes.insert(code.clone(), (q["code_challenge"].clone(), q["redirect_uri"].clone())));
        (q["state"].clone(), code)
    }
}

fn json(status: u16, body: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn invalid_grant(description: &str) -> Response<Full<Bytes>> {
    json(400, serde_json::json!({"error": "invalid_grant", "error_description": description}))
}

async fn token_endpoint(
    state: Arc<Mutex<ProviderState>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != hyper::Method::POST || req.uri().path() != "/token" {
        return Ok(json(404, serde_json::json!({"error": "not_found"})));
    }
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let form: HashMap<String, String> =
        reqwest::Url::parse(&format!("http://x/?{}", String::from_utf8_lossy(&body)))
            .unwrap()
            .query_pairs()
            .into_owned()
            .collect();
    let fail = state.lock().unwrap().fail_with;
    if let Some(status) = fail {
        return Ok(json(status, serde_json::json!({"error": "temporarily_unavailable"})));
    }
    if form.get("client_id").map(String::as_str) != Some("palyra-test") {
        return Ok(json(401, serde_json::json!({"error": "invalid_client"})));
    }
    let delay = state.lock().unwrap().refresh_delay;
    let grant = form.get("grant_type").cloned().unwrap_or_default();
    if grant == "refresh_token" {
        tokio::time::sleep(delay).await;
    }
    let mut s = state.lock().unwrap();
    match grant.as_str() {
        "authorization_code" => {
            let code = form.get("code").cloned().unwrap_or_default();
            let Some((challenge, redirect)) = s.codes.get(&code).cloned() else {
                return Ok(invalid_grant("unknown code"));
            };
            let verifier = form.get("code_verifier").cloned().unwrap_or_default();
            let computed =
                base64url(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()).as_ref());
            if computed != challenge {
                s.rejected_exchanges += 1;
                return Ok(invalid_grant("PKCE verification failed"));
            }
            if form.get("redirect_uri") != Some(&redirect) {
                return Ok(invalid_grant("redirect_uri mismatch"));
            }
            s.codes.remove(&code);
        }
        "refresh_token" => {
            let token = form.get("refresh_token").cloned().unwrap_or_default();
            if !s.refresh_tokens.remove(&token) {
                return Ok(invalid_grant("refresh token revoked or already used"));
            }
            s.refreshes += 1;
        }
        _ => return Ok(json(400, serde_json::json!({"error": "unsupported_grant_type"}))),
    }
    s.issued += 1;
    let n = s.issued;
    let refresh = format!("refresh-{n}");
    s.refresh_tokens.insert(refresh.clone());
    Ok(json(
        200,
        serde_json::json!({
            "access_token": format!("access-{n}"),
            "token_type": "Bearer",
            "expires_in": s.expires_in,
            "refresh_token": refresh,
        }),
    ))
}

async fn client(node: &TestNode) -> AuthProfileServiceClient<Channel> {
    AuthProfileServiceClient::new(node.operator().await)
}

async fn create_oauth(auth: &mut AuthProfileServiceClient<Channel>, name: &str, provider: &Provider) {
    auth.create_profile(pb::CreateProfileRequest {
        name: name.into(),
        provider: "example".into(),
        kind: pb::AuthProfileKind::Oauth2 as i32,
        api_key: Vec::new(),
        oauth2: Some(pb::OAuth2Config {
            client_id: "palyra-test".into(),
            authorize_url: format!("http://{}/authorize", provider.addr),
            token_url: provider.token_url(),
            scopes: vec!["models.read".into(), "models.write".into()],
            redirect_uri: "http://127.0.0.1:1/callback".into(),
        }),
    })
    .await
    .unwrap();
}

/// StartAuthorization, the user's consent at the provider, CompleteAuthorization.
async fn login(
    auth: &mut AuthProfileServiceClient<Channel>,
    name: &str,
    provider: &Provider,
) -> pb::AuthProfile {
    let started = auth
        .start_authorization(pb::StartAuthorizationRequest { name: name.into(), redirect_uri: String::new() })
        .await
        .unwrap()
        .into_inner();
    let (state, code) = provider.authorize(&started.authorize_url);
    assert_eq!(state, started.state);
    auth.complete_authorization(pb::CompleteAuthorizationRequest { state, code })
        .await
        .unwrap()
        .into_inner()
        .profile
        .unwrap()
}

async fn token(auth: &mut AuthProfileServiceClient<Channel>, name: &str) -> Result<String, tonic::Status> {
    auth.get_access_token(pb::GetAccessTokenRequest { name: name.into() })
        .await
        .map(|r| r.into_inner().access_token)
}

async fn status_of(auth: &mut AuthProfileServiceClient<Channel>, name: &str) -> pb::AuthProfileStatus {
    let profile = auth
        .get_profile(pb::GetProfileRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner()
        .profile
        .unwrap();
    profile.status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_profiles_hand_out_their_key_and_never_show_it() {
    let node = TestNode::start().await;
    let mut auth = client(&node).await;
    let created = auth
        .create_profile(pb::CreateProfileRequest {
            name: "openai".into(),
            provider: "openai".into(),
            kind: pb::AuthProfileKind::ApiKey as i32,
            api_key: b"sk-test-123456".to_vec(),
            oauth2: None,
        })
        .await
        .unwrap()
        .into_inner()
        .profile
        .unwrap();
    assert_eq!(created.status(), pb::AuthProfileStatus::Ready);
    let again = auth
        .create_profile(pb::CreateProfileRequest {
            name: "openai".into(),
            provider: "openai".into(),
            kind: pb::AuthProfileKind::ApiKey as i32,
            api_key: b"other".to_vec(),
            oauth2: None,
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists);

    assert_eq!(token(&mut auth, "openai").await.unwrap(), "sk-test-123456");
    let shown = auth.get_profile(pb::GetProfileRequest { name: "openai".into() }).await.unwrap().into_inner();
    assert!(!format!("{shown:?}").contains("sk-test"), "GetProfile must not carry the key");
    let listed = auth.list_profiles(pb::ListProfilesRequest {}).await.unwrap().into_inner();
    assert_eq!(listed.profiles.len(), 1);
    assert!(!format!("{listed:?}").contains("sk-test"));

    // The reserved vault scope is out of reach of plain vault calls, the operator's included.
    let mut v = VaultServiceClient::new(node.operator().await);
    let denied = v
        .get_secret(vault::GetSecretRequest {
            scope: "palyra/auth/openai".into(),
            key: "api-key".into(),
            version: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (denied.code(), reason(&denied).as_str()),
        (Code::PermissionDenied, "ERROR_REASON_POLICY_DENIED")
    );

    let revoked = auth.revoke_profile(pb::RevokeProfileRequest { name: "openai".into() }).await.unwrap();
    assert_eq!(revoked.into_inner().profile.unwrap().status(), pb::AuthProfileStatus::NeedsAuthorization);
    let gone = token(&mut auth, "openai").await.unwrap_err();
    assert_eq!(
        (gone.code(), reason(&gone).as_str()),
        (Code::FailedPrecondition, "ERROR_REASON_AUTH_REAUTHORIZATION_REQUIRED")
    );
    auth.delete_profile(pb::DeleteProfileRequest { name: "openai".into() }).await.unwrap();
    let missing = token(&mut auth, "openai").await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_authorization_then_refresh_on_expiry_with_rotation() {
    let node = TestNode::start().await;
    let provider = Provider::start().await;
    let mut auth = client(&node).await;
    create_oauth(&mut auth, "example", &provider).await;
    assert_eq!(status_of(&mut auth, "example").await, pb::AuthProfileStatus::NeedsAuthorization);
    let never = token(&mut auth, "example").await.unwrap_err();
    assert_eq!(
        (never.code(), reason(&never).as_str()),
        (Code::FailedPrecondition, "ERROR_REASON_AUTH_REAUTHORIZATION_REQUIRED")
    );

    // The first tokens expire in 30 s: inside the 60 s margin, so the next call refreshes.
    provider.with(|s| s.expires_in = 30);
    let started = auth
        .start_authorization(pb::StartAuthorizationRequest {
            name: "example".into(),
            redirect_uri: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let (state, code) = provider.authorize(&started.authorize_url);
    let (state_text, code_text) = (state.clone(), code.clone());
    let profile = auth
        .complete_authorization(pb::CompleteAuthorizationRequest { state: state.clone(), code: code.clone() })
        .await
        .unwrap()
        .into_inner()
        .profile
        .unwrap();
    assert_eq!(profile.status(), pb::AuthProfileStatus::Ready);
    assert!(profile.access_token_expires_at.is_some());
    assert!(!format!("{profile:?}").contains("access-1"));
    // The state is single use.
    let reused =
        auth.complete_authorization(pb::CompleteAuthorizationRequest { state, code }).await.unwrap_err();
    assert_eq!(
        (reused.code(), reason(&reused).as_str()),
        (Code::FailedPrecondition, "ERROR_REASON_AUTH_STATE_INVALID")
    );

    provider.with(|s| s.expires_in = 3600);
    assert_eq!(token(&mut auth, "example").await.unwrap(), "access-2", "refreshed before handing out");
    assert_eq!(provider.with(|s| s.refreshes), 1);
    assert_eq!(token(&mut auth, "example").await.unwrap(), "access-2", "fresh: no second refresh");
    assert_eq!(provider.with(|s| s.refreshes), 1);
    // The provider rotated the refresh token: only the newest one is valid.
    assert_eq!(provider.with(|s| s.refresh_tokens.iter().cloned().collect::<Vec<_>>()), vec!["refresh-2"]);
    let (dir, _node) = node.stop().await;

    // Tokens, the code and the state are nowhere in the data dir in the clear (database, WAL,
    // identity files): tokens are sealed in the vault, the state is kept hashed.
    let needles = ["access-1", "access-2", "refresh-1", "refresh-2", code_text.as_str(), state_text.as_str()];
    let mut stack = vec![dir.path().to_path_buf()];
    let mut scanned = 0;
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        scanned += 1;
        for needle in needles {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{needle} found in {}",
                path.display()
            );
        }
    }
    assert!(scanned > 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_callers_share_one_refresh() {
    let node = TestNode::start().await;
    let provider = Provider::start().await;
    let mut auth = client(&node).await;
    create_oauth(&mut auth, "example", &provider).await;
    provider.with(|s| s.expires_in = 10);
    login(&mut auth, "example", &provider).await;
    provider.with(|s| {
        s.expires_in = 3600;
        s.refresh_delay = Duration::from_millis(300);
    });
    let channel = node.operator().await;
    let mut calls = Vec::new();
    for _ in 0..50 {
        let mut c = AuthProfileServiceClient::new(channel.clone());
        calls.push(tokio::spawn(async move { token(&mut c, "example").await }));
    }
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap(), "access-2");
    }
    assert_eq!(provider.with(|s| s.refreshes), 1, "one refresh for 50 callers");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_verifier_is_rejected_by_the_provider() {
    let node = TestNode::start().await;
    let provider = Provider::start().await;
    let mut auth = client(&node).await;
    create_oauth(&mut auth, "example", &provider).await;
    let start = || pb::StartAuthorizationRequest { name: "example".into(), redirect_uri: String::new() };
    let a = auth.start_authorization(start()).await.unwrap().into_inner();
    let b = auth.start_authorization(start()).await.unwrap().into_inner();
    let (_, code_a) = provider.authorize(&a.authorize_url);
    // Flow B's state carries flow B's verifier, which does not match the challenge of flow A
    // that code A is bound to.
    let refused = auth
        .complete_authorization(pb::CompleteAuthorizationRequest { state: b.state, code: code_a.clone() })
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), reason(&refused).as_str()),
        (Code::FailedPrecondition, "ERROR_REASON_AUTH_REAUTHORIZATION_REQUIRED"),
        "{refused:?}"
    );
    assert_eq!(provider.with(|s| s.rejected_exchanges), 1);
    assert_eq!(status_of(&mut auth, "example").await, pb::AuthProfileStatus::NeedsAuthorization);
    // The right verifier still works.
    let ok = auth
        .complete_authorization(pb::CompleteAuthorizationRequest { state: a.state, code: code_a })
        .await
        .unwrap();
    assert_eq!(ok.into_inner().profile.unwrap().status(), pb::AuthProfileStatus::Ready);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_refresh_token_marks_the_profile_for_reauthorization() {
    let node = TestNode::start().await;
    let provider = Provider::start().await;
    let mut auth = client(&node).await;
    create_oauth(&mut auth, "example", &provider).await;
    provider.with(|s| s.expires_in = 5);
    login(&mut auth, "example", &provider).await;
    provider.with(|s| s.refresh_tokens.clear());
    let refused = token(&mut auth, "example").await.unwrap_err();
    assert_eq!(
        (refused.code(), reason(&refused).as_str()),
        (Code::FailedPrecondition, "ERROR_REASON_AUTH_REAUTHORIZATION_REQUIRED")
    );
    assert!(refused.message().contains("invalid_grant"), "{}", refused.message());
    assert_eq!(status_of(&mut auth, "example").await, pb::AuthProfileStatus::NeedsReauthorization);
    // No further calls to the provider until a new authorization.
    let issued = provider.with(|s| s.issued);
    assert_eq!(token(&mut auth, "example").await.unwrap_err().code(), Code::FailedPrecondition);
    assert_eq!(provider.with(|s| s.issued), issued);
    provider.with(|s| s.expires_in = 3600);
    assert_eq!(login(&mut auth, "example", &provider).await.status(), pb::AuthProfileStatus::Ready);
    assert_eq!(token(&mut auth, "example").await.unwrap(), format!("access-{}", issued + 1));
    auth.revoke_profile(pb::RevokeProfileRequest { name: "example".into() }).await.unwrap();
    auth.delete_profile(pb::DeleteProfileRequest { name: "example".into() }).await.unwrap();

    // Each change committed with its event; no event carries a token.
    let events = node.events_after(0, 10_000).await.unwrap();
    let kinds: Vec<&str> =
        events.iter().filter(|e| e.kind.starts_with("auth.")).map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "auth.profile.created",
            "auth.profile.authorized",
            "auth.profile.reauthorization_required",
            "auth.profile.authorized",
            "auth.profile.revoked",
            "auth.profile.deleted",
        ]
    );
    assert!(events.iter().all(|e| e.subject == "example" || !e.kind.starts_with("auth.")));
    assert!(!format!("{events:?}").contains("access-") && !format!("{events:?}").contains("refresh-"));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_failures_are_unavailable_with_the_providers_status() {
    let node = TestNode::start().await;
    let provider = Provider::start().await;
    let mut auth = client(&node).await;
    create_oauth(&mut auth, "example", &provider).await;
    provider.with(|s| s.expires_in = 5);
    login(&mut auth, "example", &provider).await;

    provider.with(|s| s.fail_with = Some(503));
    let failed = token(&mut auth, "example").await.unwrap_err();
    assert_eq!(
        (failed.code(), reason(&failed).as_str()),
        (Code::Unavailable, "ERROR_REASON_AUTH_PROVIDER_UNAVAILABLE")
    );
    use tonic_types::StatusExt;
    let info = failed.get_error_details().error_info().cloned().unwrap();
    assert_eq!(info.metadata.get("provider_status").map(String::as_str), Some("503"));
    assert!(failed.message().contains("503"), "{}", failed.message());
    // A provider failure is not the grant's fault: the profile stays READY and recovers.
    assert_eq!(status_of(&mut auth, "example").await, pb::AuthProfileStatus::Ready);
    provider.with(|s| {
        s.fail_with = None;
        s.expires_in = 3600;
    });
    assert_eq!(token(&mut auth, "example").await.unwrap(), "access-2");

    // Down altogether: nothing listens on the port any more.
    provider.with(|s| s.expires_in = 5);
    login(&mut auth, "example", &provider).await;
    provider.server.abort();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let down = token(&mut auth, "example").await.unwrap_err();
    assert_eq!(
        (down.code(), reason(&down).as_str()),
        (Code::Unavailable, "ERROR_REASON_AUTH_PROVIDER_UNAVAILABLE")
    );
    let info = down.get_error_details().error_info().cloned().unwrap();
    assert!(!info.metadata.contains_key("provider_status"));
    assert!(down.message().contains("could not be reached"), "{}", down.message());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_can_be_granted_the_token_of_one_profile() {
    let node = TestNode::start().await;
    let mut auth = client(&node).await;
    for name in ["granted", "other"] {
        auth.create_profile(pb::CreateProfileRequest {
            name: name.into(),
            provider: "p".into(),
            kind: pb::AuthProfileKind::ApiKey as i32,
            api_key: format!("key-{name}").into_bytes(),
            oauth2: None,
        })
        .await
        .unwrap();
    }
    let device = node.add_device(Role::Device, "agent", &[]).await;
    let mut as_device = AuthProfileServiceClient::new(node.channel(Some(&device)).await);
    let denied = token(&mut as_device, "granted").await.unwrap_err();
    assert_eq!(
        (denied.code(), reason(&denied).as_str()),
        (Code::PermissionDenied, "ERROR_REASON_POLICY_DENIED")
    );

    let mut policies = PolicyServiceClient::new(node.operator().await);
    let current = policies.get_policy_set(policy::GetPolicySetRequest {}).await.unwrap().into_inner();
    let text = current.policy_set.unwrap().policies;
    let grant = format!(
        "{text}\n@id(\"agent-token\")\npermit (principal == Palyra::Device::\"{}\", \
         action == Palyra::Action::\"palyra.auth.v1.AuthProfileService/GetAccessToken\", \
         resource == Palyra::Profile::\"granted\");\n",
        device.id
    );
    policies
        .update_policy_set(policy::UpdatePolicySetRequest { policies: grant, expected_version: None })
        .await
        .unwrap();
    assert_eq!(token(&mut as_device, "granted").await.unwrap(), "key-granted");
    let other = token(&mut as_device, "other").await.unwrap_err();
    assert_eq!(other.code(), Code::PermissionDenied);
    let manage = as_device.get_profile(pb::GetProfileRequest { name: "granted".into() }).await.unwrap_err();
    assert_eq!(manage.code(), Code::PermissionDenied);
    node.stop().await;
}

/// Runs the `palyra` binary against `node` with the operator's credentials.
async fn palyra(node: &TestNode, args: &[&str]) -> std::process::Output {
    let mut command = cli_command(node, args);
    tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap()
}

fn cli_command(node: &TestNode, args: &[&str]) -> std::process::Command {
    let mut command = palyra_bin!().cli(&node.data_dir());
    command.arg("--server").arg(node.url()).args(args);
    command
}

fn stdout_ok(output: &std::process::Output) -> String {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_adds_logs_in_through_the_loopback_redirect_and_prints_tokens() {
    let node = TestNode::start().await;
    let provider = Provider::start().await;
    let key_file = node.dir.path().join("key.txt");
    std::fs::write(&key_file, "sk-cli-key\n").unwrap();
    let key_path = key_file.to_str().unwrap();
    stdout_ok(
        &palyra(&node, &["auth", "add", "openai", "--provider", "openai", "--api-key-file", key_path]).await,
    );
    assert_eq!(stdout_ok(&palyra(&node, &["auth", "token", "openai"]).await).trim(), "sk-cli-key");

    let authorize_url = format!("http://{}/authorize", provider.addr);
    let token_url = provider.token_url();
    let added = palyra(
        &node,
        &[
            "auth",
            "add",
            "example",
            "--provider",
            "example",
            "--oauth2",
            "--client-id",
            "palyra-test",
            "--authorize-url",
            &authorize_url,
            "--token-url",
            &token_url,
            "--scope",
            "models.read",
            "--scope",
            "models.write",
        ],
    )
    .await;
    assert!(stdout_ok(&added).contains("palyra auth login example"));

    // `login` prints the URL on stderr and waits for the provider's redirect on 127.0.0.1.
    let mut login = cli_command(&node, &["auth", "login", "example"]);
    login
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = login.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    // Read stderr to its end in the background: a closed pipe would fail the CLI's later writes.
    let (found, url) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(at) = line.find("http://") {
                let _ = found.send(line[at..].trim().to_owned());
            }
        }
    });
    let url = tokio::task::spawn_blocking(move || {
        url.recv_timeout(Duration::from_secs(30)).expect("login printed no URL")
    })
    .await
    .unwrap();
    let (state, code) = provider.authorize(&url);
    let redirect = reqwest::Url::parse(&url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "redirect_uri")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    assert!(redirect.starts_with("http://127.0.0.1:"), "{redirect}");
    let page = reqwest::get(format!("{redirect}?code={code}&state={state}")).await.unwrap();
    assert!(page.status().is_success());
    let output = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap()).await.unwrap();
    assert!(stdout_ok(&output).contains("authorized example"));
    assert_eq!(stdout_ok(&palyra(&node, &["auth", "token", "example"]).await).trim(), "access-1");

    let listed = stdout_ok(&palyra(&node, &["--json", "auth", "list"]).await);
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert!(!listed.to_string().contains("sk-cli") && !listed.to_string().contains("access-1"));
    stdout_ok(&palyra(&node, &["auth", "remove", "openai"]).await);
    let gone = palyra(&node, &["auth", "token", "openai"]).await;
    assert_eq!(gone.status.code(), Some(4));
    node.stop().await;
}
