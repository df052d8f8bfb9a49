//! The web console over real HTTP against a node in-process: login links (missing, used,
//! expired), sessions (revocation ends them), CSRF and Origin/Host checks, security headers,
//! every page and action decided by Cedar and audited like its gRPC call, and no secret
//! value in any vault page.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use palyra::audit::AuditDecision;
use palyra::console::{Access, CSP, ConsoleLimits, ConsoleOptions, ROUTES, Verb};
use palyra::identity::Role;
use palyra::policy::{DEFAULT_POLICIES, actions};
use palyra::testkit::{NodeInternals, TestNode};
use palyra::vault::{Scope, SecretKey, SecretValue};
use palyra::wire::pb::console::v1::{CreateLoginTokenRequest, console_service_client::ConsoleServiceClient};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue};
use tokio::sync::oneshot;

struct Console {
    node: TestNode,
    addr: SocketAddr,
    http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    serving: Option<tokio::task::JoinHandle<()>>,
}

/// A signed-in browser: its session cookie and the CSRF token of its pages.
struct Browser {
    cookie: String,
    csrf: String,
}

impl Console {
    async fn start() -> Console {
        Console::start_with(ConsoleLimits::default()).await
    }

    async fn start_with(limits: ConsoleLimits) -> Console {
        let node = TestNode::start().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let serving = node.node.clone();
        let options = ConsoleOptions { allow_remote: false, grpc_server: node.addr.to_string(), limits };
        let serving = tokio::spawn(async move {
            palyra::console::serve(&serving, listener, options, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        while node.node.logins().console_url().is_none() {
            tokio::task::yield_now().await;
        }
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Console { node, addr, http, stop: Some(tx), serving: Some(serving) }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A login link, asked for over mTLS with the operator's certificate, as `palyra console` does.
    async fn login_url(&self) -> String {
        let mut client = ConsoleServiceClient::new(self.node.operator().await);
        client.create_login_token(CreateLoginTokenRequest {}).await.unwrap().into_inner().login_url
    }

    async fn sign_in(&self) -> Browser {
        let url = self.login_url().await;
        self.sign_in_at(&url).await
    }

    async fn sign_in_at(&self, url: &str) -> Browser {
        let response = self.http.get(url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        let set = response.headers().get("set-cookie").unwrap().to_str().unwrap().to_owned();
        let cookie = set.split(';').next().unwrap().to_owned();
        let page = self.get_with(&cookie, "/pair").await;
        assert_eq!(page.0, StatusCode::OK, "{}", page.1);
        let csrf = csrf_of(&page.1);
        Browser { cookie, csrf }
    }

    async fn get_with(&self, cookie: &str, path: &str) -> (StatusCode, String) {
        let response = self.http.get(self.url(path)).header("cookie", cookie).send().await.unwrap();
        (response.status(), response.text().await.unwrap())
    }

    fn same_origin(&self, cookie: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("cookie", HeaderValue::from_str(cookie).unwrap());
        h.insert("origin", HeaderValue::from_str(&format!("http://{}", self.addr)).unwrap());
        h
    }

    async fn post(&self, headers: HeaderMap, path: &str, form: &[(&str, &str)]) -> (StatusCode, String) {
        let response = self.http.post(self.url(path)).headers(headers).form(form).send().await.unwrap();
        (response.status(), response.text().await.unwrap())
    }

    /// Whether the audit log holds a decision on `action` by the operator.
    async fn audited(&self, action: &str, decision: AuditDecision) -> bool {
        self.audited_by(&format!("device:{}", self.node.node.operator()), action, decision).await
    }

    /// Whether the audit log holds a decision on `action` by `principal`.
    async fn audited_by(&self, principal: &str, action: &str, decision: AuditDecision) -> bool {
        let node = &self.node.node;
        node.audit().flush().await.unwrap();
        let principal = principal.to_owned();
        let records = node.audit().recent(100, Some(principal), Some(action.to_owned())).await.unwrap();
        records.iter().any(|r| r.entry.decision == decision)
    }
}

fn csrf_of(page: &str) -> String {
    let start = page.find("name=\"csrf\" value=\"").expect("a csrf field") + "name=\"csrf\" value=\"".len();
    page[start..].split('"').next().unwrap().to_owned()
}

#[tokio::test]
async fn login_links_are_single_use_and_short_lived() {
    let c = Console::start().await;
    // No session: every page refuses.
    assert_eq!(c.get_with("", "/pair").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(c.get_with("palyra_session=forged", "/devices").await.0, StatusCode::UNAUTHORIZED);
    // No token, a wrong token.
    assert_eq!(c.http.get(c.url("/login")).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let wrong = c.url(&format!("/login?token={}", "0".repeat(64)));
    assert_eq!(c.http.get(wrong).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);

    // A good token signs in once, with a strict cookie, and redirects away from the token.
    let url = c.login_url().await;
    assert!(url.starts_with(&format!("http://{}/login?token=", c.addr)), "{url}");
    let first = c.http.get(&url).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::SEE_OTHER);
    assert_eq!(first.headers()["location"], "/pair");
    let cookie = first.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    // Used: refused.
    assert_eq!(c.http.get(&url).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);

    // Expired: a token issued 61 s ago is refused.
    let old = SystemTime::now() - Duration::from_secs(61);
    let (token, _) = c.node.node.logins().issue_token(c.node.node.operator(), old).unwrap();
    let expired = c.url(&format!("/login?token={}", token.expose()));
    assert_eq!(c.http.get(expired).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);

    // The session works, and logout ends it.
    let session = cookie.split(';').next().unwrap();
    let (status, page) = c.get_with(session, "/pair").await;
    assert_eq!(status, StatusCode::OK);
    let csrf = csrf_of(&page);
    assert_eq!(c.post(c.same_origin(session), "/logout", &[("csrf", &csrf)]).await.0, StatusCode::OK);
    assert_eq!(c.get_with(session, "/pair").await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_device_that_is_not_admin_gets_no_login_link() {
    let c = Console::start().await;
    let device = c.node.add_device(Role::Device, "phone", &[]).await;
    let mut client = ConsoleServiceClient::new(c.node.channel(Some(&device)).await);
    let denied = client.create_login_token(CreateLoginTokenRequest {}).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
}

#[tokio::test]
async fn every_post_needs_the_csrf_token_and_a_same_origin() {
    let c = Console::start().await;
    let b = c.sign_in().await;
    let form = |csrf: &'static str| vec![("role", "device"), ("ttl", "600"), ("csrf", csrf)];
    // No token, a wrong token.
    let (status, _) = c.post(c.same_origin(&b.cookie), "/pair/code", &[("role", "device")]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = c.post(c.same_origin(&b.cookie), "/pair/code", &form("not-the-token")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // The right token without an Origin, from another origin, or as a cross-site fetch.
    let good = [("role", "device"), ("ttl", "600"), ("csrf", b.csrf.as_str())];
    let mut no_origin = HeaderMap::new();
    no_origin.insert("cookie", HeaderValue::from_str(&b.cookie).unwrap());
    assert_eq!(c.post(no_origin.clone(), "/pair/code", &good).await.0, StatusCode::FORBIDDEN);
    let mut evil = no_origin.clone();
    evil.insert("origin", HeaderValue::from_static("http://evil.example"));
    assert_eq!(c.post(evil, "/pair/code", &good).await.0, StatusCode::FORBIDDEN);
    // `Origin: null` (what a browser sends under no-referrer) only with Sec-Fetch-Site.
    let mut null_origin = no_origin.clone();
    null_origin.insert("origin", HeaderValue::from_static("null"));
    assert_eq!(c.post(null_origin.clone(), "/pair/code", &good).await.0, StatusCode::FORBIDDEN);
    let mut null_cross = null_origin.clone();
    null_cross.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
    assert_eq!(c.post(null_cross, "/pair/code", &good).await.0, StatusCode::FORBIDDEN);
    let mut cross_site = c.same_origin(&b.cookie);
    cross_site.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
    assert_eq!(c.post(cross_site, "/pair/code", &good).await.0, StatusCode::FORBIDDEN);
    // A Host that is not the console (DNS rebinding) is refused even for a GET.
    let rebound = c
        .http
        .get(c.url("/pair"))
        .header("cookie", &b.cookie)
        .header("host", "attacker.example:7445")
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), StatusCode::MISDIRECTED_REQUEST);
    assert!(!c.audited(actions::CREATE_PAIRING_CODE, AuditDecision::Allow).await, "nothing got through");
    // Everything right: a code, shown with its QR image; also as a browser sends it.
    let (status, _) = c.post(c.same_origin(&b.cookie), "/pair/code", &good).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let mut browser = null_origin;
    browser.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
    assert_eq!(c.post(browser, "/pair/code", &good).await.0, StatusCode::SEE_OTHER);
    assert!(c.audited(actions::CREATE_PAIRING_CODE, AuditDecision::Allow).await);
}

#[tokio::test]
async fn responses_carry_the_security_headers() {
    let c = Console::start().await;
    let b = c.sign_in().await;
    for (cookie, path) in [(b.cookie.as_str(), "/pair"), ("", "/pair"), ("", "/assets/console.js")] {
        let r = c.http.get(c.url(path)).header("cookie", cookie).send().await.unwrap();
        let h = r.headers();
        assert_eq!(h["content-security-policy"], CSP, "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["referrer-policy"], "no-referrer");
        assert_eq!(h["cache-control"], "no-store");
        assert_eq!(h["x-frame-options"], "DENY");
    }
    let (_, page) = c.get_with(&b.cookie, "/pair").await;
    assert!(
        !page.contains("<script>") && !page.contains("onclick") && !page.contains("style="),
        "no inline code"
    );
}

#[tokio::test]
async fn a_revoked_operator_loses_its_session() {
    let c = Console::start().await;
    let b = c.sign_in().await;
    let node = &c.node.node;
    node.revoke(node.operator(), "lost laptop").await.unwrap();
    node.peers().revoked(node.operator());
    assert_eq!(c.get_with(&b.cookie, "/devices").await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn every_console_action_is_decided_by_cedar_and_audited_like_its_rpc() {
    let c = Console::start().await;
    let b = c.sign_in().await;
    let node = &c.node.node;
    let phone = c.node.add_device(Role::Device, "phone", &[]).await;
    let phone_id = phone.id.to_string();
    let request_id = ulid::Ulid::generate().to_string();
    let operator = palyra::identity::Principal::Device {
        id: node.operator(),
        role: Role::Admin,
        fingerprint: String::new(),
    };
    enum Call {
        Get(String),
        Post(String, Vec<(&'static str, String)>),
    }
    let csrf = || ("csrf", b.csrf.clone());
    let cases: Vec<(&str, &str, Call)> = vec![
        (actions::LIST_PAIRING_REQUESTS, "resource", Call::Get("/pair".into())),
        (actions::LIST_PAIRING_REQUESTS, "resource", Call::Get("/pair/requests".into())),
        (
            actions::CREATE_PAIRING_CODE,
            "resource",
            Call::Post("/pair/code".into(), vec![csrf(), ("role", "device".into())]),
        ),
        (
            actions::APPROVE_PAIRING,
            "resource",
            Call::Post(format!("/pair/requests/{request_id}/approve"), vec![csrf()]),
        ),
        (
            actions::REJECT_PAIRING,
            "resource",
            Call::Post(format!("/pair/requests/{request_id}/reject"), vec![csrf()]),
        ),
        (actions::LIST_ENROLLMENT_KEYS, "resource", Call::Get("/enrollment".into())),
        (actions::LIST_ENROLLMENT_KEYS, "resource", Call::Get("/enrollment/table".into())),
        (
            actions::REVOKE_ENROLLMENT_KEY,
            "resource",
            Call::Post("/enrollment/0000000000/revoke".into(), vec![csrf()]),
        ),
        (actions::LIST_DEVICES, "resource", Call::Get("/devices".into())),
        (actions::REVOKE_DEVICE, "resource", Call::Post(format!("/devices/{phone_id}/revoke"), vec![csrf()])),
        // The resource check of RevokeDevice (on the device), shared with the gRPC service.
        (
            actions::REVOKE_DEVICE,
            "resource is Palyra::Device",
            Call::Post(format!("/devices/{phone_id}/revoke"), vec![csrf()]),
        ),
        (actions::LIST_SECRETS, "resource", Call::Get("/vault".into())),
        // The resource check of ListSecrets on a scope.
        (
            actions::LIST_SECRETS,
            "resource in Palyra::Scope::\"agents\"",
            Call::Get("/vault?scope=agents/alpha".into()),
        ),
        (
            actions::GET_SECRET_METADATA,
            "resource in Palyra::Scope::\"agents\"",
            Call::Get("/vault/secret?scope=agents/alpha&key=TOKEN".into()),
        ),
        (actions::GET_POLICY_SET, "resource", Call::Get("/policies".into())),
        (actions::LIST_POLICY_VERSIONS, "resource", Call::Get("/policies".into())),
        (
            actions::VALIDATE_POLICY_SET,
            "resource",
            Call::Post("/policies/validate".into(), vec![csrf(), ("policies", String::new())]),
        ),
        (
            actions::ROLLBACK_POLICY_SET,
            "resource",
            Call::Post("/policies/rollback".into(), vec![csrf(), ("version", "1".into())]),
        ),
        (actions::LIST_AUDIT_RECORDS, "resource", Call::Get("/audit".into())),
        (actions::VERIFY_AUDIT_LOG, "resource", Call::Get("/audit".into())),
        (actions::NODE_STREAM_EVENTS, "resource", Call::Get("/events".into())),
    ];
    node.vault()
        .put(
            &Scope::parse("agents/alpha").unwrap(),
            &SecretKey::parse("TOKEN").unwrap(),
            SecretValue::new(b"v".to_vec()),
            None,
        )
        .await
        .unwrap();
    // UpdatePolicySet cannot be forbidden to the operator: the lockout guard refuses such a
    // policy set (tests/grpc_policy_audit.rs). Every other action can.
    for (action, resource, call) in cases {
        let policy = format!(
            "{DEFAULT_POLICIES}\n@id(\"console-test-forbid\")\nforbid (principal, action == Palyra::Action::\"{action}\", {resource});\n"
        );
        node.policies().update(&policy, None, &operator).await.unwrap();
        let (status, page) = match &call {
            Call::Get(path) => c.get_with(&b.cookie, path).await,
            Call::Post(path, form) => {
                let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
                c.post(c.same_origin(&b.cookie), path, &form).await
            }
        };
        assert_eq!(status, StatusCode::FORBIDDEN, "{action} ({resource}): {page}");
        assert!(page.contains("Denied by policy") && page.contains("may not call"), "{action}: {page}");
        assert!(c.audited(action, AuditDecision::Deny).await, "{action} ({resource}) audited as denied");
        node.policies().update(DEFAULT_POLICIES, None, &operator).await.unwrap();
    }
    // The phone was never revoked by a refused request.
    let phone = node.device(phone.id).await.unwrap().unwrap();
    assert_eq!(phone.status, palyra::identity::DeviceStatus::Active);
}

#[tokio::test]
async fn vault_pages_show_metadata_never_values() {
    let c = Console::start().await;
    let b = c.sign_in().await;
    let vault = &c.node.node.vault();
    let canary = "canary-value-7f3a9c";
    for (scope, key) in
        [("agents/alpha", "OPENAI_API_KEY"), ("agents/beta", "DB_PASSWORD"), ("connectors/slack", "BOT")]
    {
        let (s, k) = (Scope::parse(scope).unwrap(), SecretKey::parse(key).unwrap());
        vault.put(&s, &k, SecretValue::new(canary.as_bytes().to_vec()), None).await.unwrap();
        vault.put(&s, &k, SecretValue::new(format!("{canary}-v2").into_bytes()), None).await.unwrap();
    }
    let pages = [
        "/vault",
        "/vault?scope=agents",
        "/vault?scope=agents/alpha",
        "/vault/secret?scope=agents/alpha&key=OPENAI_API_KEY",
        "/vault/secret?scope=connectors/slack&key=BOT",
    ];
    for path in pages {
        let (status, page) = c.get_with(&b.cookie, path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(!page.contains("canary"), "{path} shows a value");
        assert!(!page.contains(&hex::encode(canary)), "{path} shows a value in hex");
    }
    let (_, tree) = c.get_with(&b.cookie, "/vault").await;
    assert!(tree.contains(">alpha<") && tree.contains(">slack<"), "{tree}");
    let (_, detail) = c.get_with(&b.cookie, "/vault/secret?scope=agents/alpha&key=OPENAI_API_KEY").await;
    assert!(detail.contains("Latest version</dt><dd>2"), "{detail}");
    // The reserved scope stays out of the tree (auth-reserved-scope forbids even the operator).
    let (status, _) = c.get_with(&b.cookie, "/vault?scope=palyra").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_enrollment_page_lists_keys_without_secrets_and_revokes_them() {
    use palyra::wire::pb::pairing::v1::{self as pb, pairing_service_client::PairingServiceClient};
    let c = Console::start().await;
    let b = c.sign_in().await;
    let created = PairingServiceClient::new(c.node.operator().await)
        .create_enrollment_key(pb::CreateEnrollmentKeyRequest {
            scopes: vec!["agents/ci".into()],
            max_uses: Some(3),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let secret = palyra::pairing::EnrollmentToken::parse(&created.token).unwrap().secret;
    let (status, page) = c.get_with(&b.cookie, "/enrollment").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains(&created.key_id) && page.contains("0 of 3") && page.contains("agents/ci"),
        "{page}"
    );
    assert!(!page.contains(secret.as_str()) && !page.contains(&created.token), "the page shows no secret");
    let path = format!("/enrollment/{}/revoke", created.key_id);
    let (status, _) = c.post(c.same_origin(&b.cookie), &path, &[("csrf", &b.csrf)]).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "back to the page");
    let (_, page) = c.get_with(&b.cookie, "/enrollment/table").await;
    assert!(page.contains("revoked") && !page.contains(&path), "{page}");
    let (status, _) =
        c.post(c.same_origin(&b.cookie), "/enrollment/0000000000/revoke", &[("csrf", &b.csrf)]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

const SCHEMA: &str = include_str!("../src/policy/schema.cedarschema");

/// A concrete path of a route pattern: each `{param}` a fresh id nothing is named by.
fn concrete(pattern: &str) -> String {
    pattern
        .split('/')
        .map(
            |segment| {
                if segment.starts_with('{') { ulid::Ulid::generate().to_string() } else { segment.to_owned() }
            },
        )
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn the_route_table_is_the_router_and_decides_before_every_handler() {
    // The table itself: one entry per method and path, real action ids, public routes explicit.
    let mut seen = std::collections::HashSet::new();
    let (mut public, mut session) = (Vec::new(), Vec::new());
    for route in ROUTES {
        assert!(
            seen.insert((route.method, route.path)),
            "{} {} has two entries",
            route.method.as_str(),
            route.path
        );
        match route.access {
            Access::Public => public.push((route.method, route.path)),
            Access::Session => session.push((route.method, route.path)),
            Access::Gate(list) => {
                assert!(!list.is_empty(), "{}", route.path);
                for action in list {
                    assert!(actions::ALL.contains(action), "{}: {action} is not an action", route.path);
                    assert!(
                        SCHEMA.contains(&format!("\"{action}\"")),
                        "{}: {action} is not in the schema",
                        route.path
                    );
                }
            }
        }
    }
    public.sort_unstable_by_key(|(_, p)| *p);
    assert_eq!(
        public,
        [
            (Verb::Get, "/"),
            (Verb::Get, "/assets/console.css"),
            (Verb::Get, "/assets/console.js"),
            (Verb::Get, "/login")
        ],
        "only the assets, the login link and the redirect of / are public"
    );
    assert_eq!(session, [(Verb::Post, "/logout")], "only signing out needs a session and no action");

    let c = Console::start().await;
    let node = &c.node.node;
    // A second admin signs in; policies forbid it one action at a time (the lockout guard judges
    // the operator who stores them, who keeps every right).
    let admin = c.node.add_device(Role::Admin, "second-admin", &[]).await;
    let (token, _) = node.logins().issue_token(admin.id, SystemTime::now()).unwrap();
    let b = c.sign_in_at(&c.url(&format!("/login?token={}", token.expose()))).await;
    let principal = format!("device:{}", admin.id);
    let operator = palyra::identity::Principal::Device {
        id: node.operator(),
        role: Role::Admin,
        fingerprint: String::new(),
    };

    // A path the table does not name, and every method the table does not name on a path it
    // does, are refused before any handler (and decided by nobody: no audit record).
    node.audit().flush().await.unwrap();
    let records_before = node.audit().recent(10_000, None, None).await.unwrap().len();
    let methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];
    for path in ["/nope", "/pair/", "/devices/x", "/assets/other.js", "/vault/secret/x"] {
        for method in methods {
            let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let r = c.http.request(m, c.url(path)).headers(c.same_origin(&b.cookie)).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{method} {path}");
        }
    }
    let mut refused_methods = 0;
    for route in ROUTES {
        let path = concrete(route.path);
        for method in methods {
            if ROUTES.iter().any(|r| r.path == route.path && r.method.as_str() == method) {
                continue;
            }
            let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let r = c.http.request(m, c.url(&path)).headers(c.same_origin(&b.cookie)).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            refused_methods += 1;
        }
    }
    node.audit().flush().await.unwrap();
    assert_eq!(
        node.audit().recent(10_000, None, None).await.unwrap().len(),
        records_before,
        "nothing was decided"
    );

    // Each action of each gated route, forbidden to this admin, is refused by the layer with its
    // audit record — before the handler, which would have refused these requests otherwise
    // (ids that name nothing, forms without their fields: 404, 400 or 422).
    let mut denials = 0;
    for route in ROUTES {
        let Access::Gate(list) = route.access else { continue };
        let path = concrete(route.path);
        for action in list {
            let policy = format!(
                "{DEFAULT_POLICIES}\n@id(\"route-table-forbid\")\nforbid (principal == Palyra::Device::\"{}\", action == Palyra::Action::\"{action}\", resource);\n",
                admin.id
            );
            node.policies().update(&policy, None, &operator).await.unwrap();
            let (status, page) = match route.method {
                Verb::Get => c.get_with(&b.cookie, &path).await,
                Verb::Post => c.post(c.same_origin(&b.cookie), &path, &[("csrf", b.csrf.as_str())]).await,
            };
            assert_eq!(status, StatusCode::FORBIDDEN, "{} {path} ({action}): {page}", route.method.as_str());
            assert!(
                page.contains("Denied by policy") && page.contains("may not call"),
                "{path} {action}: {page}"
            );
            assert!(
                c.audited_by(&principal, action, AuditDecision::Deny).await,
                "{path}: {action} audited as denied"
            );
            denials += 1;
        }
    }
    node.policies().update(DEFAULT_POLICIES, None, &operator).await.unwrap();
    // Allowed again, the same requests reach their handlers (which refuse the made-up input).
    let (status, _) = c.post(c.same_origin(&b.cookie), "/pair/code", &[("csrf", b.csrf.as_str())]).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "the handler's own refusal, after the gate");
    println!(
        "route table: {} routes ({} public, {} session-only), {refused_methods} method/path pairs outside the table refused, {denials} gate denials before the handler",
        ROUTES.len(),
        public.len(),
        session.len()
    );
}

#[tokio::test]
async fn a_form_larger_than_its_route_allows_is_refused_unread() {
    let c = Console::start().await;
    let b = c.sign_in().await;
    let reason = "x".repeat(64 * 1024);
    let id = ulid::Ulid::generate().to_string();
    let form = [("csrf", b.csrf.as_str()), ("reason", reason.as_str())];
    let (status, _) = c.post(c.same_origin(&b.cookie), &format!("/pair/requests/{id}/reject"), &form).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(!c.audited(actions::REJECT_PAIRING, AuditDecision::Allow).await, "refused before the gate");
}

// --- Connection limits ------------------------------------------------------------------------

/// A TCP connection to the console from `local` (another loopback address is another peer).
async fn connect_from(local: &str, to: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(format!("{local}:0").parse().unwrap())?;
    socket.connect(to).await
}

/// Sends a GET of the stylesheet and reads the response head: its status, or `None` when the
/// connection was closed or reset instead.
async fn status_on(stream: &mut tokio::net::TcpStream, host: SocketAddr) -> Option<u16> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let request = format!("GET /assets/console.css HTTP/1.1\r\nhost: {host}\r\n\r\n");
    let _ = stream.write_all(request.as_bytes()).await;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Reads until the server closes the connection (a guard ends a test that would hang).
async fn until_closed(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt as _;
    let mut all = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("the console never closed the connection (no header-read timeout)");
    all
}

#[tokio::test]
async fn a_half_sent_request_and_an_idle_connection_are_closed() {
    use tokio::io::AsyncWriteExt as _;
    let timeout = Duration::from_millis(500);
    let c =
        Console::start_with(ConsoleLimits { header_read_timeout: timeout, ..ConsoleLimits::default() }).await;
    // A request head that never ends.
    let mut half = connect_from("127.0.0.1", c.addr).await.unwrap();
    half.write_all(format!("GET /pair HTTP/1.1\r\nhost: {}\r\nx-slow: ", c.addr).as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let answer = until_closed(&mut half).await;
    println!(
        "half-sent request: closed after {:?} (timeout {timeout:?}), answered {:?}",
        started.elapsed(),
        String::from_utf8_lossy(&answer).lines().next()
    );
    // A connection that never sends anything.
    let mut silent = connect_from("127.0.0.1", c.addr).await.unwrap();
    let started = std::time::Instant::now();
    until_closed(&mut silent).await;
    println!("silent connection: closed after {:?}", started.elapsed());
    // A keep-alive connection, served once, then idle.
    let mut idle = connect_from("127.0.0.1", c.addr).await.unwrap();
    assert_eq!(status_on(&mut idle, c.addr).await, Some(200));
    let started = std::time::Instant::now();
    until_closed(&mut idle).await;
    println!("idle keep-alive connection: closed after {:?}", started.elapsed());
}

#[tokio::test]
async fn one_address_flooding_the_console_does_not_lock_out_another() {
    let limits = ConsoleLimits {
        header_read_timeout: Duration::from_secs(60),
        max_connections: 24,
        max_connections_per_address: 8,
        max_connection_age: None,
    };
    let c = Console::start_with(limits).await;
    // 127.0.0.1 opens 20 connections and asks on each: the first 8 are served and held
    // (keep-alive), the rest are refused.
    let mut flood = Vec::new();
    for _ in 0..20 {
        flood.push(connect_from("127.0.0.1", c.addr).await.unwrap());
    }
    let (mut held, mut refused) = (Vec::new(), 0);
    for mut stream in flood {
        match status_on(&mut stream, c.addr).await {
            Some(200) => held.push(stream),
            _ => refused += 1,
        }
    }
    println!(
        "127.0.0.1: {} connections held, {refused} refused (cap {})",
        held.len(),
        limits.max_connections_per_address
    );
    assert_eq!(held.len(), limits.max_connections_per_address, "the per-address cap holds");
    assert_eq!(refused, 20 - limits.max_connections_per_address);

    // Another address is served while 127.0.0.1 is at its cap.
    let mut other = connect_from("127.0.0.2", c.addr).await.unwrap();
    assert_eq!(status_on(&mut other, c.addr).await, Some(200), "127.0.0.2 is served");
    held.push(other);

    // More addresses fill the total cap; then even a new address is refused.
    let mut more_refused = 0;
    for n in 3..=6 {
        for _ in 0..limits.max_connections_per_address {
            let mut stream = connect_from(&format!("127.0.0.{n}"), c.addr).await.unwrap();
            match status_on(&mut stream, c.addr).await {
                Some(200) => held.push(stream),
                _ => more_refused += 1,
            }
        }
    }
    println!(
        "total: {} connections held, {more_refused} refused over the total cap {}",
        held.len(),
        limits.max_connections
    );
    assert_eq!(held.len(), limits.max_connections, "the total cap holds");
    let mut late = connect_from("127.0.0.7", c.addr).await.unwrap();
    assert_ne!(status_on(&mut late, c.addr).await, Some(200), "over the total cap");

    // Closed connections give their slots back.
    drop(held);
    let mut served = false;
    for _ in 0..100 {
        let mut again = connect_from("127.0.0.1", c.addr).await.unwrap();
        if status_on(&mut again, c.addr).await == Some(200) {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "slots come back when connections close");
}

#[tokio::test]
async fn shutdown_ends_event_streams_and_drains() {
    let mut c = Console::start().await;
    let b = c.sign_in().await;
    let mut events = c.http.get(c.url("/events")).header("cookie", &b.cookie).send().await.unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    let _ = c.stop.take().unwrap().send(());
    let serving = c.serving.take().unwrap();
    tokio::time::timeout(Duration::from_secs(30), serving).await.expect("the console drained").unwrap();
    // The stream ended cleanly (no error, no more data).
    while let Some(chunk) = events.chunk().await.unwrap() {
        assert!(String::from_utf8_lossy(&chunk).starts_with(':'), "only keep-alive comments");
    }
    assert!(c.node.node.logins().console_url().is_none());
}

#[tokio::test]
async fn event_streams_per_operator_are_bounded() {
    let c = Console::start().await;
    let b = c.sign_in().await;
    let cap = palyra::console::MAX_EVENT_STREAMS_PER_OPERATOR;
    let mut open = Vec::new();
    for _ in 0..cap {
        let r = c.http.get(c.url("/events")).header("cookie", &b.cookie).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        open.push(r);
    }
    let over = c.http.get(c.url("/events")).header("cookie", &b.cookie).send().await.unwrap();
    assert_eq!(over.status(), StatusCode::TOO_MANY_REQUESTS);
    println!("event streams: {} open, the next refused", open.len());
    // A closed stream gives its slot back (once its task sees the close).
    drop(open.pop());
    let mut reopened = false;
    for _ in 0..100 {
        let r = c.http.get(c.url("/events")).header("cookie", &b.cookie).send().await.unwrap();
        if r.status() == StatusCode::OK {
            reopened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reopened, "a slot comes back when a stream closes");
}

#[tokio::test]
async fn a_connection_past_its_age_is_closed_however_often_it_asks() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    // The metrics endpoint's bound (30 s there), short here: a client asking again before every
    // idle timeout would otherwise hold its slot for ever.
    let limits = ConsoleLimits {
        max_connection_age: Some(Duration::from_secs(1)),
        max_connections: 2,
        max_connections_per_address: 1,
        ..ConsoleLimits::default()
    };
    let c = Console::start_with(limits).await;
    let mut held = connect_from("127.0.0.1", c.addr).await.unwrap();
    let started = std::time::Instant::now();
    let mut answered = 0;
    let mut buf = [0u8; 4096];
    while started.elapsed() < Duration::from_secs(15) {
        let head = format!("HEAD /assets/console.css HTTP/1.1\r\nhost: {}\r\n\r\n", c.addr);
        if held.write_all(head.as_bytes()).await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_secs(10), held.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => answered += 1,
            _ => break,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lived = started.elapsed();
    assert!(answered >= 2, "served while young: {answered}");
    assert!(lived < Duration::from_secs(4), "closed at its age, not kept by its requests: {lived:?}");
    // Its slot is free again for the same address.
    let mut next = connect_from("127.0.0.1", c.addr).await.unwrap();
    assert_eq!(status_on(&mut next, c.addr).await, Some(200));
}
